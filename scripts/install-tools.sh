#!/usr/bin/env bash
# Install what deviceid-inject's tests and demo need, on Debian 12 as root:
#   - Debian packages (iproute2, ethtool, patchelf, ...), apt-get only when one is missing;
#   - cnitool and the reference CNI plugins host-device and tuning, built with `go install`
#     into $REPO/.tools/cni-bin (skipped when the stamp and the binaries' build info match);
#   - then a smoke test: a real host-device -> tuning chain run by cnitool in a scratch
#     netns, for cniVersion 0.3.0 and 1.1.0 (skip with --no-smoke or DIT_SKIP_SMOKE=1).
# Idempotent; a re-run with everything in place takes well under a second.
#
# Usage: scripts/install-tools.sh [--no-smoke] [--verbose]
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
SMOKE=1
VERBOSE=0
[[ "${DIT_SKIP_SMOKE:-0}" == 1 ]] && SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --no-smoke) SMOKE=0 ;;
        --verbose|-v) VERBOSE=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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

# ---- 3. smoke test: host-device -> tuning chain through cnitool ----------------
smoke_status="smoke skipped"
if ((SMOKE)); then
    sfx="$(( $$ % 100000 ))"
    NS="dit-smoke-$sfx"            # netns name
    HOST_IF="dit-h$sfx"            # host end of the veth (<= 15 bytes)
    PEER_IF="dit-p$sfx"            # end that host-device moves into the netns
    NS_PATH="/var/run/netns/$NS"
    SCRATCH="$(mktemp -d /tmp/dit-smoke.XXXXXX)"
    smoke_cleanup() {
        ip link del "$HOST_IF" 2>/dev/null || true
        ip netns del "$NS" 2>/dev/null || true
        rm -rf "$SCRATCH"
    }
    trap smoke_cleanup EXIT

    ip netns add "$NS"
    ip link add "$HOST_IF" type veth peer name "$PEER_IF"
    mkdir -p "$SCRATCH/conf" "$SCRATCH/cache" /var/lib/cni

    # cnitool has no flag or env var for its cache dir (libcni default /var/lib/cni);
    # run it in a private mount namespace with a scratch dir bound over /var/lib/cni,
    # so the host cache is untouched and `gc` cannot reach other "demo" attachments.
    cnitool_iso() {
        # shellcheck disable=SC2016  # "$1" and "$@" belong to the inner sh
        env CNI_PATH="$CNI_BIN" NETCONFPATH="$SCRATCH/conf" CNI_IFNAME=net1 \
            unshare --mount --propagation private \
            sh -c 'mount --bind "$1" /var/lib/cni && shift && exec "$@"' \
            sh "$SCRATCH/cache" "$CNI_BIN/cnitool" "$@"
    }
    step() { # step NAME CMD...: run, show its stderr on failure
        if ! "${@:2}" 2>"$SCRATCH/err"; then
            cat "$SCRATCH/err" >&2
            die "smoke test step failed: $1"
        fi
    }
    peer_on_host() { ip link show "$PEER_IF" >/dev/null 2>&1; }

    MAC="c2:d1:7e:00:00:01"
    done_steps=()
    for V in 0.3.0 1.1.0; do
        cat >"$SCRATCH/conf/demo.conflist" <<EOF
{"cniVersion":"$V","name":"demo","plugins":[
  {"type":"host-device","device":"$PEER_IF"},
  {"type":"tuning","sysctl":{},"capabilities":{"mac":true}}]}
EOF
        out="$(CAP_ARGS="{\"mac\":\"$MAC\"}" step "add $V" cnitool_iso add demo "$NS_PATH")"
        ((VERBOSE)) && log "ADD $V: $(jq -c . <<<"$out")"
        jq -e --arg v "$V" --arg ns "$NS_PATH" --arg mac "$MAC" \
            '.cniVersion == $v and .interfaces[0].name == "net1" and .interfaces[0].sandbox == $ns
             and .interfaces[0].mac == $mac' <<<"$out" >/dev/null \
            || die "unexpected ADD $V result: $out"
        link="$(ip -n "$NS" link show net1)"
        [[ "$link" == *"$MAC"* ]] || die "net1 in $NS lacks CAP_ARGS mac $MAC"
        steps="add"
        if [[ "$V" != 0.3.* ]]; then step "check $V" cnitool_iso check demo "$NS_PATH"; steps+="/check"; fi
        if [[ "$V" == 1.1.0 ]]; then step "status $V" cnitool_iso status demo "$NS_PATH"; steps+="/status"; fi
        step "del $V" cnitool_iso del demo "$NS_PATH"; steps+="/del"
        peer_on_host || die "DEL $V did not bring $PEER_IF back to the host"
        [[ -z "$(ls -A "$SCRATCH/cache/results" 2>/dev/null)" ]] || die "DEL $V left a cached result"
        if [[ "$V" == 1.1.0 ]]; then
            # gc with no valid attachments: libcni DELs every cached "demo" attachment, then sends GC.
            CAP_ARGS="{\"mac\":\"$MAC\"}" step "re-add $V" cnitool_iso add demo "$NS_PATH" >/dev/null
            step "gc $V" cnitool_iso gc demo "$NS_PATH"
            peer_on_host || die "GC did not DEL the cached attachment"
            steps+="/gc"
        fi
        done_steps+=("$V $steps")
    done
    smoke_cleanup
    trap - EXIT
    smoke_status="smoke ok ($(IFS=,; echo "${done_steps[*]}"))"
fi

ms=$(( $(date +%s%N) / 1000000 - START_MS ))
elapsed="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
echo "install-tools: $apt_status; $go_status (cnitool $CNITOOL_VERSION, plugins $CNI_PLUGINS_VERSION in ${CNI_BIN#"$REPO"/}); $smoke_status; ${elapsed}s"
