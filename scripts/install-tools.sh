#!/usr/bin/env bash
# Install what deviceid-inject's tests and demo need, on Debian 12 as root:
#   - Debian packages (iproute2, ethtool, patchelf, ...), apt-get only when one is missing;
#   - cnitool and the reference CNI plugins host-device and tuning, built with `go install`
#     into $REPO/.tools/cni-bin (skipped when the stamp and the binaries' build info match);
# Idempotent; a re-run with everything in place takes well under a second.
#
# Usage: scripts/install-tools.sh
# (tests/test_cnitool.py drives the real chains these tools make possible)
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
CNITOOL_VERSION="v1.3.1"        # github.com/containernetworking/cni: cnitool has add/check/del/gc/status
CNI_PLUGINS_VERSION="v1.10.0"   # github.com/containernetworking/plugins: supports CNI 0.1.0 .. 1.1.0;
                                # its go.mod needs Go >= 1.26.8 (older local Go: GOTOOLCHAIN=auto fetches it)
CNI_PLUGINS=(main/host-device meta/tuning)
APT_PACKAGES=(iproute2 ethtool patchelf util-linux jq time gcc)

CNITOOL_PKG="github.com/containernetworking/cni/cnitool"
CNI_PLUGINS_MOD="github.com/containernetworking/plugins"

# ---- arguments ---------------------------------------------------------------
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install-tools: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

START_MS=$(( $(date +%s%N) / 1000000 ))
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS="$REPO/.tools"
CNI_BIN="$TOOLS/cni-bin"
STAMP="$CNI_BIN/.versions"
WANT_STAMP="cnitool=$CNITOOL_VERSION plugins=$CNI_PLUGINS_VERSION cgo=0"

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

ms=$(( $(date +%s%N) / 1000000 - START_MS ))
elapsed="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
echo "install-tools: $apt_status; $go_status (cnitool $CNITOOL_VERSION, plugins $CNI_PLUGINS_VERSION in ${CNI_BIN#"$REPO"/}); ${elapsed}s"
