#!/usr/bin/env bash
# Build dist/deviceid-inject: ONE executable for /opt/cni/bin that needs no Python on the node
# and runs on any x86_64 Linux with glibc 2.31 or newer (Debian 11, Ubuntu 20.04, RHEL 9...).
#
#   ./build.sh                    build dist/deviceid-inject (and dist/build-info.txt)
#   ./build.sh hello              build .build/hello/deviceid-inject the same way from
#                                 benchmarks/floor (stdin to stdout): the benchmark's floor
#   ./build.sh prepare            steps 1 to 2b only (the roots, the Python, the venv): what
#                                 `make test` runs at low priority beside the source suite
#
# One build.sh at a time per work tree (a lock in .build): a second one waits, then finds the
# cached stages the first one made.
#
# How, in this order:
#  1. A Debian bullseye root (glibc 2.31, gcc, patchelf; no Python) made with debootstrap under
#     .build/bullseye, cached: a marker file per stage, so a re-run skips what is done.
#  1b. The Python the binary embeds, built in that root from Debian 13 (trixie) source packages
#     (packaging/python-sources.txt: CPython 3.13 with Debian's security patches, OpenSSL 3.5,
#     sqlite, libffi, zlib; packaging/build-python.sh) into /opt/python: built against glibc 2.31,
#     so it needs no newer one, from sources Debian supports. The sources come with `apt-get source`
#     through an apt configuration of its own under .build/apt-src (the host's lists stay
#     untouched). Re-built only when those two files or the root's packages change.
#  2. A venv in that root, from that Python, with packaging/requirements-build.txt (Nuitka and the
#     runtime dependencies, every package pinned), re-made only when that file or the Python changes.
#  3. src/deviceid_inject copied to a build folder in the root (the repo is never written to),
#     plus a generated _build.py (COMMIT, DATE, NUITKA, GLIBC) that `--version` prints.
#  4. Nuitka --mode=standalone (a folder with the program and its libraries, patched by
#     patchelf), then packaging/launcher.c compiled with the root's gcc, then packaging/pack.py
#     appends the folder to the launcher. On the node the launcher unpacks the folder once,
#     atomically, to /var/cache/deviceid-inject/<build id>/ and execs the program there.
#     Nuitka's own onefile mode is not used: its cached mode SIGBUSes on concurrent first runs.
#  5. The glibc floor (highest GLIBC_x.y symbol version) over every ELF that reaches the node:
#     the launcher and every file of the folder. Above GLIBC_MAX the build fails.
#
# The build id (the cache folder's name on the node) is a digest of everything that goes into
# the binary except the build date: the sources, the commit name, the venv's `pip freeze`, the
# root's Debian package versions, this script, launcher.c, pack.py and the Nuitka flags. When
# dist/ already holds a binary with the same build id, the build is skipped (FORCE=1 rebuilds).
#
# Needs root (debootstrap, chroot, mount) and a network path to the Debian mirror and PyPI;
# debootstrap is installed with apt-get if missing. Everything that mounts runs inside
# `unshare --mount` (a private mount namespace that dies with the process), with a trap that
# unmounts too: nothing stays mounted on the host, even when the build fails or is killed.
#
# env: MIRROR=http://deb.debian.org/debian   the bullseye mirror, and trixie's for the sources
#      SECURITY_MIRROR=http://deb.debian.org/debian-security   trixie-security's sources
#      KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg    signs trixie's Sources (host file)
#      GLIBC_MAX=2.31                        fail when the floor is higher
#      LTO=no|yes                            yes: smaller code, a much slower link on 2 cores
#      FORCE=1                               rebuild even when dist/ is up to date
#      REBUILD_ROOT=1                        throw the cached roots away first
set -euo pipefail

REPO=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
cd "$REPO"
PKG=deviceid_inject
SRC=src
BIN=deviceid-inject
BUILD=$REPO/.build
ROOT=$BUILD/bullseye
RUNTIME_ROOT=$BUILD/trixie
DIST=$REPO/dist
PREPARE=0
if [ "${1:-}" = prepare ]; then
  PREPARE=1
  shift
fi
if [ "${1:-}" = hello ]; then # the same pipeline for the benchmark's floor program
  PKG=floor
  SRC=benchmarks
  DIST=$BUILD/hello
  shift
fi
OUT=out-$PKG
MIRROR=${MIRROR:-http://deb.debian.org/debian}
GLIBC_MAX=${GLIBC_MAX:-2.31}
LTO=${LTO:-no}
# perl and tcl run the OpenSSL and sqlite builds, dpkg-dev unpacks Debian source packages,
# autoconf, automake and libtool make libffi's configure (Debian's source has none)
APT_PKGS=gcc,libc6-dev,make,patchelf,ccache,binutils,ca-certificates,perl,pkg-config,tcl,dpkg-dev,autoconf,automake,libtool
REQUIREMENTS=packaging/requirements-build.txt
PY_SOURCES=packaging/python-sources.txt
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEYRING=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
HOST_CA=${HOST_CA:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}

t0=$(date +%s)
log() { printf '[build.sh +%4ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }
die() {
  printf 'build.sh: %s\n' "$*" >&2
  exit 1
}

[ $# -eq 0 ] || die "usage: ./build.sh | ./build.sh hello | ./build.sh prepare (install: dist/deviceid-inject install)"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
mkdir -p "$BUILD"
exec 9>"$BUILD/.lock"
if ! flock -n 9; then
  log "waiting for another build.sh in this tree"
  flock 9
fi

# minbase_root SUITE DIR LOG [DEBOOTSTRAP_OPTION...]: a new Debian minbase root of SUITE in DIR,
# debootstrap's output in LOG. debootstrap mounts /proc in the root itself and leaves it mounted
# when killed: a private mount namespace keeps that mount off the host.
minbase_root() {
  local suite=$1 dir=$2 out=$3
  shift 3
  log "debootstrap $suite -> $dir ($MIRROR)"
  rm -rf --one-file-system "$dir"
  unshare --mount --propagation private -- debootstrap --variant=minbase "$@" "$suite" "$dir" "$MIRROR" \
    >"$out" 2>&1 || {
    tail -20 "$out" >&2
    die "debootstrap $suite failed (whole log: $out)"
  }
  rm -f "$dir"/var/cache/apt/archives/*.deb
}

# ---------------------------------------------------------------- 1. the bullseye root (cached)
if ! command -v debootstrap >/dev/null; then
  log "apt-get install debootstrap (host)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if [ "${REBUILD_ROOT:-0}" = 1 ]; then
  log "REBUILD_ROOT=1: removing $ROOT"
  rm -rf --one-file-system "$ROOT" "$RUNTIME_ROOT"
fi
if [ ! -f "$ROOT/.stage1-ok" ]; then
  # the compilers come in with --include: no apt-get run on a cold root
  minbase_root bullseye "$ROOT" "$BUILD/debootstrap.log" --include="$APT_PKGS"
  echo "$APT_PKGS" >"$ROOT/.stage1-pkgs"
  touch "$ROOT/.stage1-ok"
fi

# in_root CODE: run bash CODE as root inside the bullseye root, with a clean environment,
# /proc and /dev mounted in a private mount namespace (gone when it exits; the trap unmounts too)
in_root() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1 code=$2 ca=$3
    cleanup() {
      for m in "$root/dev" "$root/proc"; do
        if mountpoint -q "$m"; then umount -l "$m"; fi
      done
    }
    trap cleanup EXIT
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # pip in the root trusts what this host trusts (a TLS-intercepting proxy, say)
    cert=/etc/ssl/certs/ca-certificates.crt
    if [ -f "$ca" ]; then
      cp -L "$ca" "$root/etc/ssl/certs/build-host-ca.crt"
      cert=/etc/ssl/certs/build-host-ca.crt
    fi
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
      PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
      PIP_CERT="$cert" SSL_CERT_FILE="$cert" \
      PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
      ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
      ${no_proxy:+no_proxy=$no_proxy} \
      /bin/bash -euo pipefail -c "$code"
  ' in_root "$ROOT" "$1" "$HOST_CA"
}

# Debian packages added to APT_PKGS after the root was cached
if [ "$(cat "$ROOT/.stage1-pkgs" 2>/dev/null)" != "$APT_PKGS" ]; then
  log "apt-get install ${APT_PKGS//,/ } (root)"
  in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends ${APT_PKGS//,/ } >/dev/null && apt-get clean"
  echo "$APT_PKGS" >"$ROOT/.stage1-pkgs"
fi
# the root's package versions (gcc, libc6, python3.9...) are part of the build id
# shellcheck disable=SC2016 # a dpkg-query format
chroot "$ROOT" dpkg-query -W -f '${Package}=${Version}\n' >"$BUILD/dpkg.txt"
GLIBC=$(sed -n 's/^libc6=\([0-9]*\.[0-9]*\).*/\1/p' "$BUILD/dpkg.txt")
[ -n "$GLIBC" ] || die "cannot tell the root's glibc version"

# ---------------------------------------------------------------- 1b. the Python (cached)
PY_KEY=$(cat "$PY_SOURCES" packaging/build-python.sh "$BUILD/dpkg.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$ROOT/.stage-python-key" 2>/dev/null)" != "$PY_KEY" ]; then
  log "the Python: apt-get source $(grep -v '^#' "$PY_SOURCES" | tr '\n' ' ')"
  rm -f "$ROOT/.stage-python-key"
  [ -f "$KEYRING" ] || die "no $KEYRING (apt-get install debian-archive-keyring, or set KEYRING)"
  APT_SRC=$BUILD/apt-src
  rm -rf "$APT_SRC" "$ROOT/tmp/src"
  mkdir -p "$APT_SRC/lists/partial" "$APT_SRC/cache/archives/partial" "$ROOT/tmp/src"
  printf 'deb-src [signed-by=%s] %s trixie main\ndeb-src [signed-by=%s] %s trixie-security main\n' \
    "$KEYRING" "$MIRROR" "$KEYRING" "$SECURITY_MIRROR" >"$APT_SRC/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_SRC/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT_SRC/lists" -o "Dir::Cache=$APT_SRC/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User=root)
  apt-get "${APT_OPTS[@]}" update -qq
  # shellcheck disable=SC2046 # one word per source=version line
  (cd "$ROOT/tmp/src" && apt-get "${APT_OPTS[@]}" source -qq --download-only $(grep -v '^#' "$REPO/$PY_SOURCES")) \
    >"$BUILD/apt-source.log" 2>&1 || {
    cat "$BUILD/apt-source.log" >&2
    die "apt-get source failed"
  }
  cp packaging/build-python.sh "$ROOT/tmp/build-python.sh"
  log "the Python: building in the root (packaging/build-python.sh, once per version set)"
  in_root "bash /tmp/build-python.sh /tmp/src"
  rm -rf "$ROOT/tmp/src" "$ROOT/tmp/build-python.sh"
  echo "$PY_KEY" >"$ROOT/.stage-python-key"
fi
PYTHON_VERSION=$(chroot "$ROOT" /opt/python/bin/python3 -c 'import sys; print(sys.version.split()[0])')

# ---------------------------------------------------------------- 2. the venv (cached by its pins)
VENV_KEY=$(cat "$REQUIREMENTS" "$BUILD/dpkg.txt" "$ROOT/.stage-python-key" | sha256sum | cut -c1-16)
if [ "$(cat "$ROOT/.stage2-key" 2>/dev/null)" != "$VENV_KEY" ]; then
  log "venv in the root: $REQUIREMENTS"
  rm -f "$ROOT/.stage2-key"
  cp "$REQUIREMENTS" "$ROOT/tmp/requirements-build.txt"
  in_root "
    rm -rf /opt/venv
    /opt/python/bin/python3 -m venv /opt/venv
    /opt/venv/bin/python -m pip install -q --upgrade pip
    /opt/venv/bin/python -m pip install -q --no-deps -r /tmp/requirements-build.txt
    /opt/venv/bin/python -m pip check
    /opt/venv/bin/python -m pip freeze --exclude pip --exclude setuptools >/opt/venv/freeze.txt"
  echo "$VENV_KEY" >"$ROOT/.stage2-key"
fi
NUITKA=$(sed -n 's/^[Nn]uitka==//p' "$ROOT/opt/venv/freeze.txt")

# ---------------------------------------------------------------- 2b. the image's run-time root
# The image takes the libraries the binary does not carry (the loader, libc, libgcc_s) from a
# Debian 13 (trixie) minbase root, a release in support: glibc keeps old symbol versions, so a
# binary built against 2.31 runs on trixie's. packaging/image.py and the image test use it.
if [ "$PKG" = deviceid_inject ] && [ ! -f "$RUNTIME_ROOT/.minbase-ok" ]; then
  minbase_root trixie "$RUNTIME_ROOT" "$BUILD/debootstrap-trixie.log"
  touch "$RUNTIME_ROOT/.minbase-ok"
fi
if [ "$PREPARE" = 1 ]; then
  log "prepared: the roots, Python $PYTHON_VERSION, the venv (Nuitka $NUITKA)"
  exit 0
fi

# ---------------------------------------------------------------- 3. the sources, the build id
STAGE=$ROOT/build # in the root as /build; $OUT keeps the last standalone folder until a rebuild
rm -rf "$STAGE/src"
mkdir -p "$STAGE/src"
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' --exclude=_build.py -cf - "$PKG" | tar -C "$STAGE/src" -xf -
cp packaging/launcher.c packaging/pack.py "$STAGE/"
# for step 5, run in the root with its objdump: "GLIBC_x.y FILE" per ELF, its highest version
cat >"$STAGE/glibc-versions.sh" <<'EOF'
set -euo pipefail
find "$@" -type f -print0 | while IFS= read -r -d '' f; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  v=$(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
  echo "${v:-none} ${f#/build/out-*/}"
done | sort -V
EOF

if git -C "$REPO" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
  # dirty: a change to a tracked file, or an untracked file among the build's inputs
  if ! git -C "$REPO" diff --quiet HEAD -- ||
    [ -n "$(git -C "$REPO" ls-files --others --exclude-standard -- "$SRC" packaging build.sh)" ]; then
    COMMIT=$COMMIT-dirty
  fi
else
  COMMIT=unknown
fi

FLAGS=(
  --mode=standalone
  --python-flag=-m      # compile the package as `python -m deviceid_inject` runs it
  --python-flag=no_site # no site.py: faster, no site-packages on the node
  --python-flag=isolated # ignore PYTHON* variables on the node
  --include-package-data=deviceid_inject # schema.json
  --nofollow-import-to='*.tests' --nofollow-import-to='*.test'
  --nofollow-import-to=pyroute2.fixtures
  --noinclude-pytest-mode=nofollow --noinclude-setuptools-mode=nofollow
  --output-dir="/build/$OUT" --output-filename="$BIN"
  --lto="$LTO" --assume-yes-for-downloads --quiet
)
# sqlite3 (and libsqlite3) stays in: pyroute2/__init__.py imports pyroute2.ndb, whose schema.py
# imports sqlite3, so `from pyroute2 import IPRoute` fails without it (tried with
# --nofollow-import-to=sqlite3). It would not lower the floor either: the program itself
# (libpython, linked in) needs GLIBC_2.29, as libsqlite3 does.

BUILD_ID=$({
  (cd "$STAGE/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  echo "commit $COMMIT"
  cat "$ROOT/opt/venv/freeze.txt" "$BUILD/dpkg.txt" "$ROOT/.stage-python-key" build.sh packaging/launcher.c packaging/pack.py
  printf '%s\n' "${FLAGS[@]}"
} | sha256sum | cut -c1-24)

if [ "${FORCE:-0}" != 1 ] && [ -x "$DIST/$BIN" ] &&
  grep -qx "build-id: $BUILD_ID" "$DIST/build-info.txt" 2>/dev/null &&
  grep -qx "sha256: $(sha256sum <"$DIST/$BIN" | cut -d' ' -f1)" "$DIST/build-info.txt"; then
  log "up to date (build id $BUILD_ID; FORCE=1 rebuilds)"
  cat "$DIST/build-info.txt"
  exit 0
fi

# GLIBC is the root's glibc, the one the binary was built against: the highest floor it can
# have. The floor itself can only be measured after the build (step 5, in build-info.txt).
cat >"$STAGE/src/$PKG/_build.py" <<EOF
"""Written by build.sh into the compiled binary only; cli.version_text() prints it."""

COMMIT = "$COMMIT"
BUILD_ID = "$BUILD_ID"  # keys the validated-config cache (config._build_id)
DATE = "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
NUITKA = "$NUITKA"
GLIBC = "$GLIBC"
EOF

# ---------------------------------------------------------------- 4. compile, launcher, pack
log "nuitka standalone: commit $COMMIT, build id $BUILD_ID"
FOLDER=/build/$OUT/$PKG.dist
rm -rf "${STAGE:?}/$OUT"
mkdir -p "$STAGE/$OUT"
in_root "
  export CCACHE_DIR=/root/.cache/ccache NUITKA_CACHE_DIR=/root/.cache/Nuitka
  cd /build/$OUT
  /opt/venv/bin/python -m nuitka $(printf '%q ' "${FLAGS[@]}") --jobs=$(nproc) /build/src/$PKG
  test -x $FOLDER/$BIN
  # The Python stage builds its extension modules and libraries with debug info (19 MiB of the 88
  # here); Nuitka strips only its program. Stripped as Debian strips its own libraries.
  find $FOLDER -type f -name '*.so*' -exec strip --strip-unneeded {} +
  gcc -O2 -Wall -o /build/$OUT/launcher /build/launcher.c
  /opt/python/bin/python3 /build/pack.py /build/$OUT/launcher $FOLDER $BUILD_ID /build/$OUT/$BIN
  bash /build/glibc-versions.sh /build/$OUT/launcher $FOLDER >/build/$OUT/glibc.txt"
log "compiled"

# ---------------------------------------------------------------- 5. glibc floor, dist/
FLOOR=$(grep -v '^none ' "$STAGE/$OUT/glibc.txt" | tail -1 | cut -d' ' -f1)
FLOOR=${FLOOR#GLIBC_}
[ -n "$FLOOR" ] || die "no GLIBC symbol versions found: is objdump working?"
log "glibc floor: $FLOOR (set by: $(grep "^GLIBC_$FLOOR " "$STAGE/$OUT/glibc.txt" | cut -d' ' -f2 | tr '\n' ' '))"
if [ "$(printf '%s\n%s\n' "$FLOOR" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
  cat "$STAGE/$OUT/glibc.txt" >&2
  die "the binary needs glibc $FLOOR, more than GLIBC_MAX=$GLIBC_MAX"
fi

mkdir -p "$DIST"
cp "$STAGE/$OUT/$BIN" "$DIST/.$BIN.tmp"
chmod 0755 "$DIST/.$BIN.tmp"
mv -f "$DIST/.$BIN.tmp" "$DIST/$BIN"
{
  echo "build-id: $BUILD_ID"
  echo "commit: $COMMIT"
  echo "nuitka: $NUITKA"
  echo "python: $PYTHON_VERSION ($(grep '^python3' "$PY_SOURCES"), Debian trixie source built in the root)"
  echo "openssl: $(grep '^openssl=' "$PY_SOURCES" | cut -d= -f2)"
  echo "built-against-glibc: $GLIBC"
  echo "glibc-floor: $FLOOR"
  echo "files: $(find "$STAGE/$OUT/$PKG.dist" -type f | wc -l), unpacked $(du -sk "$STAGE/$OUT/$PKG.dist" | cut -f1) KiB"
  echo "size: $(stat -c %s "$DIST/$BIN")"
  echo "sha256: $(sha256sum <"$DIST/$BIN" | cut -d' ' -f1)"
} >"$DIST/build-info.txt"
cat "$DIST/build-info.txt"
log "done: $DIST/$BIN (standalone folder kept in .build/bullseye/build/$OUT/$PKG.dist)"
