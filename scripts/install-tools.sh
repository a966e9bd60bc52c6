#!/usr/bin/env bash
# Install what deviceid-inject's tests and demo need, on Debian 12 as root; every version is in
# scripts/versions.env:
#   - Debian packages (iproute2, ethtool, etcd-server, iptables, ...), apt-get only when one is missing;
#   - cnitool and the reference CNI plugins, built with `go install` into $REPO/.tools/cni-bin;
#   - from their Go modules at exact versions, each into a folder named by its version and skipped
#     when its stamp matches: Multus (every v4 command and its thick manifest; v3.7.x's plugin) into
#     $REPO/.tools/k8s, Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#     kube-proxy, kubectl) into $REPO/.tools/k8s, containerd and runc into $REPO/.tools/node.
# Idempotent; a re-run with everything in place takes about a second. Cold, about 14 minutes on 2
# cores; progress goes to stderr.
#
# Usage: scripts/install-tools.sh [--api-servers]
#   --api-servers  also kube-apiserver of each KUBERNETES_API_VERSIONS (the other releases in support),
#                  for `make test-kubernetes-versions` (part of `make test`)
# (tests/system/test_cnitool.py drives the real chains these tools make possible)
set -euo pipefail

# ---- pinned versions: scripts/versions.env, the one place they are written ----
# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"
read -r -a CNI_PLUGINS <<<"$CNI_PLUGINS"
# iptables and conntrack: kube-proxy on the test node; libseccomp-dev and pkg-config: runc's seccomp;
# libc6-dev: gcc's static libc for the test node's pause program; busybox-static: the `cp` in
# Multus v4.0.2's image; binutils: objdump and readelf for the image's runtime libraries; podman:
# loads the image archive and builds deploy/Containerfile (tests/system/test_image.py).
APT_PACKAGES=(iproute2 ethtool patchelf util-linux jq time gcc libc6-dev etcd-server openssl iptables conntrack
    libseccomp-dev pkg-config busybox-static binutils podman)

CNITOOL_PKG="github.com/containernetworking/cni/cnitool"
CNI_PLUGINS_MOD="github.com/containernetworking/plugins"

# ---- arguments ---------------------------------------------------------------
API_SERVERS=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        --api-servers) API_SERVERS=1 ;;
        *) echo "install-tools: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

START_MS=$(( $(date +%s%N) / 1000000 ))
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS="$REPO/.tools"
CNI_BIN="$TOOLS/cni-bin"
STAMP="$CNI_BIN/.versions"
WANT_STAMP="cnitool=$CNITOOL_VERSION plugins=$CNI_PLUGINS_VERSION (${CNI_PLUGINS[*]##*/}) cgo=0"
K8S_TOOLS="$TOOLS/k8s"
NODE_TOOLS="$TOOLS/node"

log() { echo "install-tools: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Turn signals into a normal exit so the EXIT traps below clean up.
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, ip netns)"

mkdir -p "$CNI_BIN"
# Serialise concurrent runs (parallel CI jobs, two shells).
exec 9>"$TOOLS/.install.lock"
flock 9

# ---- 1. Debian packages ---------------------------------------------------
apt_status=""
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    apt_status="installed ${missing[*]}"
else
    apt_status="apt ok"
fi

# ---- 2. cnitool + reference plugins ---------------------------------------
if ! command -v go >/dev/null 2>&1; then
    [[ -x /usr/local/go/bin/go ]] || die "go not found on PATH"
    PATH="/usr/local/go/bin:$PATH"
fi

# Module version a Go binary was built from ("" when unreadable).
built_version() { go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'; }

binaries_ok() {
    [[ -x "$CNI_BIN/cnitool" && "$(built_version "$CNI_BIN/cnitool")" == "$CNITOOL_VERSION" ]] || return 1
    local p
    for p in "${CNI_PLUGINS[@]}"; do
        [[ -x "$CNI_BIN/${p##*/}" && "$(built_version "$CNI_BIN/${p##*/}")" == "$CNI_PLUGINS_VERSION" ]] || return 1
    done
}
tools_ok() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" ]] && binaries_ok; }

go_status=""
if tools_ok; then
    go_status="cni tools ok"
else
    log "go install cnitool@$CNITOOL_VERSION, plugins@$CNI_PLUGINS_VERSION (${CNI_PLUGINS[*]##*/})"
    rm -f "$STAMP"
    stage="$(mktemp -d "$TOOLS/.stage.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    plugin_pkgs=()
    for p in "${CNI_PLUGINS[@]}"; do plugin_pkgs+=("$CNI_PLUGINS_MOD/plugins/$p@$CNI_PLUGINS_VERSION"); done
    (
        export GOBIN="$stage" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
        go install "$CNITOOL_PKG@$CNITOOL_VERSION"
        go install "${plugin_pkgs[@]}"
    )
    mv -f "$stage"/* "$CNI_BIN"/
    rm -rf "$stage"
    trap - EXIT
    binaries_ok || die "built binaries do not carry the pinned versions (go version -m)"
    go_status="built cni tools"
fi

# Every plugin must list spec 1.1.0 in VERSION.
for p in "${CNI_PLUGINS[@]}"; do
    b="$CNI_BIN/${p##*/}"
    out="$(echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION "$b")" || die "${p##*/} VERSION failed"
    jq -e '.supportedVersions | index("1.1.0")' <<<"$out" >/dev/null \
        || die "${p##*/} does not support CNI 1.1.0: $out"
done
echo "$WANT_STAMP" >"$STAMP"

# ---- 3. the Kubernetes test bed and the node: Go modules built at exact versions -------------------
# None of these installs with `go install` here (the module proxy does not serve their version
# lists), so each is downloaded as a module at its exact version and built in a writable copy of that
# folder. The module zips leave vendor/ out (only vendor/modules.txt stays), so the build resolves
# modules. Each lands in a folder named by its version, with a stamp; a stamp that matches skips it.
k8s_status=""
mkdir -p "$K8S_TOOLS" "$NODE_TOOLS"

# build_module_copy MODULE VERSION OUT [VAR=VALUE ...] -- PACKAGE...
# The VAR=VALUE words (CGO_ENABLED, TAGS, LDFLAGS) change how it is built; FILE=PATH=SOURCE puts a
# file of ours at PATH in the module's copy first (a program built against that version's packages).
build_module_copy() {
    local module="$1" version="$2" out="$3"; shift 3
    local cgo=0 tags="" ldflags="" files=() f
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        case "$1" in
            CGO_ENABLED=*) cgo="${1#*=}" ;;
            TAGS=*) tags="${1#*=}" ;;
            LDFLAGS=*) ldflags="${1#*=}" ;;
            FILE=*=*) files+=("${1#FILE=}") ;;
            *) die "build_module_copy: unknown option $1" ;;
        esac
        shift
    done
    shift
    local stamp="$out/.version" want="$module@$version $*${tags:+ tags=$tags}"
    for f in "${files[@]}"; do want="$want ${f%%=*}=$(sha256sum <"${f#*=}" | cut -c1-16)"; done
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
    log "building $module@$version ($*)"
    local src dir
    src="$(go mod download -json "$module@$version" | jq -r '.Dir // empty')"
    [[ -n "$src" ]] || die "go mod download $module@$version gave no folder"
    dir="$(mktemp -d "$TOOLS/.src.XXXXXX")"
    cp -r "$src/." "$dir/"
    chmod -R u+w "$dir"
    rm -rf "$dir/vendor"
    for f in "${files[@]}"; do mkdir -p "$dir/$(dirname "${f%%=*}")" && cp "${f#*=}" "$dir/${f%%=*}"; done
    rm -rf "$out" && mkdir -p "$out"
    (cd "$dir" && CGO_ENABLED="$cgo" GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
        go build -tags "$tags" -ldflags "$ldflags" -o "$out/" "$@") || { rm -rf "$dir"; die "building $module@$version failed"; }
    rm -rf "$dir"
    echo "$want" >"$stamp"
    k8s_status="$k8s_status built $module@$version;"
}

for v in $MULTUS_V4_VERSIONS; do
    # Every command, as its hack/build-go.sh builds them for its image (passthru-cni is named passthru).
    build_module_copy gopkg.in/k8snetworkplumbingwg/multus-cni.v4 "$v" "$K8S_TOOLS/multus-$v" -- ./cmd/...
    [[ ! -x "$K8S_TOOLS/multus-$v/passthru-cni" ]] || mv "$K8S_TOOLS/multus-$v/passthru-cni" "$K8S_TOOLS/multus-$v/passthru"
    # Its own thick-mode manifest, which the test node applies with only the image reference changed.
    manifest="$K8S_TOOLS/multus-$v/multus-daemonset-thick.yml"
    if [[ ! -f "$manifest" ]]; then
        src="$(go mod download -json "gopkg.in/k8snetworkplumbingwg/multus-cni.v4@$v" | jq -r '.Dir // empty')"
        cp "$src/deployments/multus-daemonset-thick.yml" "$manifest.tmp" && chmod 0644 "$manifest.tmp"
        mv "$manifest.tmp" "$manifest"
    fi
done
# Multus's own parser of a Pod's network selection (k8sclient.GetPodNetwork) as a program, for every v4
# version: tests/system/test_admission.py holds deploy/selection-route's policy against it.
for v in $MULTUS_V4_VERSIONS; do
    build_module_copy gopkg.in/k8snetworkplumbingwg/multus-cni.v4 "$v" "$K8S_TOOLS/multus-selection-$v" \
        "FILE=cmd/parse-selection/main.go=$REPO/testdata/multus/parse-selection.go" -- ./cmd/parse-selection
done
for v in $MULTUS_V3_VERSIONS; do
    build_module_copy gopkg.in/k8snetworkplumbingwg/multus-cni.v3 "$v" "$K8S_TOOLS/multus-$v" -- ./cmd
    [[ -x "$K8S_TOOLS/multus-$v/multus" ]] || mv "$K8S_TOOLS/multus-$v/cmd" "$K8S_TOOLS/multus-$v/multus"
done

# The node's runtime: containerd (no btrfs: that snapshotter needs cgo and is left out without it)
# and runc with seccomp (cgo and libseccomp), each stamped with its version as upstream's Makefiles do.
build_module_copy github.com/containerd/containerd/v2 "$CONTAINERD_VERSION" "$NODE_TOOLS/containerd-$CONTAINERD_VERSION" \
    "LDFLAGS=-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    -- ./cmd/containerd ./cmd/containerd-shim-runc-v2 ./cmd/ctr
build_module_copy github.com/opencontainers/runc "$RUNC_VERSION" "$NODE_TOOLS/runc-$RUNC_VERSION" \
    CGO_ENABLED=1 "TAGS=seccomp urfave_cli_no_docs" "LDFLAGS=-X main.version=${RUNC_VERSION#v}" -- .

# Kubernetes: k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with folders of its own
# repository, which a module consumer does not have; a scratch module requires it and points each of
# those at the published module of the matching version (v1.37.2 -> v0.37.2). One `go build` for all
# six commands, so their shared packages compile once; the version is stamped as upstream's build does
# (a node then registers as v1.37.2, not v0.0.0-master).
# build_kubernetes VERSION COMMAND...: the commands of k8s.io/kubernetes VERSION into
# $K8S_TOOLS/kubernetes-VERSION, skipped when its stamp matches.
build_kubernetes() {
    local version="$1"; shift
    local dir="$K8S_TOOLS/kubernetes-$version" cmds=("$@")
    if [[ -f "$dir/.version" && "$(cat "$dir/.version")" == "$version ${cmds[*]}" ]]; then
        return 0
    fi
    log "building Kubernetes $version (${cmds[*]})"
    local staging_version="v0.${version#v1.}" minor="${version#v1.}" scratch gomod c
    minor="${minor%%.*}"
    scratch="$(mktemp -d "$TOOLS/.kubernetes.XXXXXX")"
    gomod="$(go mod download -json "k8s.io/kubernetes@$version" | jq -r '.GoMod // empty')"
    [[ -n "$gomod" ]] || die "go mod download k8s.io/kubernetes@$version gave no go.mod"
    {
        echo "module deviceid-inject.test/k8stools"
        echo
        echo "go $(awk '$1 == "go" { print $2; exit }' "$gomod")"
        echo
        echo "require k8s.io/kubernetes $version"
        sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
    } >"$scratch/go.mod"
    {
        printf '//go:build tools\n\npackage tools\n\nimport (\n'
        for c in "${cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
        printf ')\n'
    } >"$scratch/tools.go"
    local version_pkg=k8s.io/component-base/version
    local ldflags="-X $version_pkg.gitVersion=$version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor"
    ldflags="$ldflags -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
    local pkgs=()
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$scratch" && export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
        && go mod tidy >/dev/null 2>&1 && mkdir out && go build -ldflags "$ldflags" -o out/ "${pkgs[@]}") \
        || { rm -rf "$scratch"; die "building Kubernetes $version failed"; }
    rm -rf "$dir" && mkdir -p "$dir"
    mv "$scratch"/out/* "$dir/"
    rm -rf "$scratch"
    echo "$version ${cmds[*]}" >"$dir/.version"
    k8s_status="$k8s_status built Kubernetes $version;"
}

build_kubernetes "$KUBERNETES_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
if ((API_SERVERS)); then  # the other releases in support: their API server only (make test-kubernetes-versions)
    for v in $KUBERNETES_API_VERSIONS; do build_kubernetes "$v" kube-apiserver; done
fi
command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
k8s_status="${k8s_status:- k8s test bed ok;} etcd $(etcd --version | awk '/etcd Version/ {print $3}')"

ms=$(( $(date +%s%N) / 1000000 - START_MS ))
elapsed="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
echo "install-tools: $apt_status; $go_status (cnitool $CNITOOL_VERSION, plugins $CNI_PLUGINS_VERSION in ${CNI_BIN#"$REPO"/});$k8s_status; ${elapsed}s"
