#!/usr/bin/env bash
# Build the Python the binary embeds, and the libraries it links, into /opt/python, from the Debian 13
# source packages in packaging/python-sources.txt. build.sh runs this once per version set, inside
# its Debian 11 root (glibc 2.31, gcc 10): whatever is compiled here needs no newer glibc.
#
#   build-python.sh SRC_DIR     SRC_DIR holds the .dsc files and tarballs apt-get source fetched
#
# - OpenSSL 3.5 (an LTS release, upstream support to 2030-04), shared, with Debian's patches:
#   libssl.so.3 and libcrypto.so.3 go into the binary's folder (Nuitka copies them).
# - sqlite 3.46, shared, with Debian's patches (pyroute2 imports sqlite3 through pyroute2.ndb).
# - libffi 3.4 and zlib 1.3.1, static and position-independent, with Debian's patches: linked into
#   _ctypes and zlib, so no libz.so.1 or libffi.so is needed from the node.
# - CPython from the upstream tarball Debian ships (the .orig), plus Debian's security and crash
#   fixes: every patch of debian/patches/series from its first CVE- line on. Debian's patches
#   before that line are its own layout (dist-packages, multiarch paths, ensurepip disabled...),
#   which a Python under /opt does not want. No PGO or LTO: they would more than double this
#   stage on 2 cores, and Nuitka compiles the program's own code anyway. No test modules.
#   expat and libmpdec are CPython's bundled copies (trixie's expat 2.9.0 was not served here).
set -euo pipefail

SRC=$1
PREFIX=/opt/python
JOBS=$(nproc)
WORK=/tmp/python-build

t0=$(date +%s)
log() { printf '[build-python +%4ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }

rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK" "$PREFIX"
cd "$WORK"
for pkg in openssl libffi sqlite3 zlib; do
  dpkg-source -q -x "$SRC"/"${pkg}"_*.dsc "$pkg" >/dev/null # applies Debian's patches
done
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
# the shared libraries here find each other through this RUNPATH until Nuitka copies them into its
# folder and points them at it ($ORIGIN)
RPATH="-Wl,-rpath,$PREFIX/lib"

log "zlib (static)"
(cd zlib && CFLAGS="-O2 -fPIC" ./configure --prefix="$PREFIX" --static >/dev/null &&
  make -s -j"$JOBS" libz.a >/dev/null && make -s install >/dev/null)

log "libffi (static)"
# Debian's libffi source has no configure (Debian runs autoreconf) and wants autoconf 2.71 and
# libtool 2.4.7; bullseye has 2.69 and 2.4.6. Three lines make it fit them: the version check, the
# symbol-underscore probe (no underscore on x86_64 ELF: the default) and the 2.70 default-includes
# macro (its 2.69 counterpart instead).
(cd libffi && sed -i -e 's/^AC_PREREQ(\[2.71\])/AC_PREREQ([2.69])/' -e '/^LT_SYS_SYMBOL_USCORE$/d' \
  -e 's/^AC_CHECK_INCLUDES_DEFAULT$/AC_HEADER_STDC/' configure.ac && autoreconf -fi >/dev/null 2>&1 && ./configure -q --prefix="$PREFIX" --libdir="$PREFIX/lib" --disable-shared --enable-static \
  --with-pic --disable-docs --disable-multi-os-directory >/dev/null &&
  make -s -j"$JOBS" >/dev/null 2>&1 && make -s install >/dev/null 2>&1)

log "sqlite3 (shared)"
(cd sqlite3 && ./configure -q --prefix="$PREFIX" --disable-static --enable-shared --disable-tcl \
  --disable-readline LDFLAGS="$RPATH" >/dev/null &&
  make -s -j"$JOBS" libsqlite3.la >/dev/null 2>&1 && make -s lib_install >/dev/null 2>&1 &&
  mkdir -p "$PREFIX/lib/pkgconfig" && cp sqlite3.h src/sqlite3ext.h "$PREFIX/include/" &&
  cp sqlite3.pc "$PREFIX/lib/pkgconfig/")

log "openssl (shared)"
# /etc/ssl as OPENSSLDIR: the node's CA store where something uses the default paths
(cd openssl && ./Configure linux-x86_64 --prefix="$PREFIX" --libdir=lib --openssldir=/etc/ssl \
  shared no-tests no-docs "$RPATH" >/dev/null &&
  make -s -j"$JOBS" build_libs >/dev/null && make -s install_dev >/dev/null)

log "CPython"
tar -xf "$SRC"/python3.13_*.orig.tar.xz
mkdir debian-python && tar -C debian-python -xf "$SRC"/python3.13_*.debian.tar.xz
PY=$(echo Python-3.13.*)
for p in $(sed -n '/^CVE-/,$p' debian-python/debian/patches/series); do
  patch -d "$PY" -p1 -s <"debian-python/debian/patches/$p"
done
(cd "$PY" && ./configure -q --prefix="$PREFIX" --with-openssl="$PREFIX" --with-openssl-rpath="$PREFIX/lib" \
  --with-ensurepip=no --disable-test-modules --without-system-libmpdec \
  LDFLAGS="-L$PREFIX/lib $RPATH" CPPFLAGS="-I$PREFIX/include" >/dev/null &&
  make -s -j"$JOBS" >make.log 2>&1 && make -s install >/dev/null 2>&1) || {
  tail -40 "$PY/make.log" >&2
  exit 1
}
"$PREFIX/bin/python3" -c 'import ssl, ctypes, sqlite3, zlib, hashlib; print(ssl.OPENSSL_VERSION)' >&2
rm -rf "$WORK"
log "done: $("$PREFIX/bin/python3" -VV)"
