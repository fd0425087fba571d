# shellcheck shell=bash
# Shared helpers for the ec2lab image scripts (scripts/build-kernel,
# scripts/fetch-debian-kernel, scripts/build-initramfs). Source it; it has no
# side effects besides defining functions and EC2LAB_CACHE.
#
# Conventions: progress goes to stderr (so `path=$(scripts/x)` captures only the
# result), the result path is the last line on stdout.

EC2LAB_CACHE="${EC2LAB_CACHE:-$HOME/.cache/ec2lab}"
# shellcheck disable=SC2034 # used by the scripts that source this file
EC2LAB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${EC2LAB_PROG:-${0##*/}}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${EC2LAB_PROG:-${0##*/}}" "$*" >&2; exit 1; }

# sha256 of stdin, hex only.
sha256_stdin() { sha256sum | cut -d' ' -f1; }

# pkg_installed NAME -> 0 if the Debian package is installed.
pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = 'install ok installed' ]
}

# pkg_version NAME -> installed version (empty if not installed).
pkg_version() {
    pkg_installed "$1" && dpkg-query -W -f='${Version}' "$1"
}

_apt_updated=0
# apt_update_once: run `apt-get update` at most once per script run.
apt_update_once() {
    [ "$_apt_updated" = 1 ] && return 0
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    _apt_updated=1
}

# apt_candidate NAME -> candidate version ("" if unknown). Updates the package
# lists once if apt knows nothing about the package (fresh machine).
apt_candidate() {
    local v
    v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        apt_update_once
        v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    fi
    [ "$v" = "(none)" ] && v=""
    printf '%s\n' "$v"
}

# need_root_for_apt: apt-get install/download of missing things needs root.
_need_root() {
    [ "$(id -u)" = 0 ] || die "missing Debian packages ($*); run as root or: sudo apt-get install -y --no-install-recommends $*"
}

# ensure_pkgs PKG...: install the packages that are missing.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" = 0 ] && return 0
    _need_root "${missing[@]}"
    log "installing: ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# ensure_cmds CMD=PKG...: install PKG when CMD is not on PATH.
ensure_cmds() {
    local pair pkgs=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || pkgs+=("${pair#*=}")
    done
    [ "${#pkgs[@]}" = 0 ] || ensure_pkgs "${pkgs[@]}"
}

# apt_download_deb NAME VERSION DIR -> path of NAME_VERSION_*.deb in DIR,
# downloading it with `apt-get download` if it is not there yet.
apt_download_deb() {
    local name=$1 ver=$2 dir=$3 f
    mkdir -p "$dir"
    f=$(find "$dir" -maxdepth 1 -name "${name}_${ver//:/%3a}_*.deb" -print -quit)
    if [ -z "$f" ]; then
        log "apt-get download $name=$ver"
        # apt-get download writes into the current directory. As root, apt
        # would drop to _apt, which cannot write to a root-owned cache.
        local opts=()
        [ "$(id -u)" = 0 ] && opts=(-o APT::Sandbox::User=root)
        (cd "$dir" && apt-get download -q ${opts[@]+"${opts[@]}"} "$name=$ver" >&2) \
            || die "apt-get download $name=$ver failed"
        f=$(find "$dir" -maxdepth 1 -name "${name}_${ver//:/%3a}_*.deb" -print -quit)
        [ -n "$f" ] || die "apt-get download $name=$ver produced no .deb in $dir"
    fi
    printf '%s\n' "$f"
}

# atomic_symlink TARGET LINK: point LINK at TARGET, replacing it atomically.
atomic_symlink() {
    local target=$1 link=$2 tmp
    tmp="$link.tmp.$$"
    ln -sfn "$target" "$tmp"
    mv -T "$tmp" "$link"
}

# usage_from_header FILE: print the leading comment block of FILE (after the
# shebang), without the '# ' prefixes. Used for --help.
usage_from_header() {
    awk 'NR==1 && /^#!/ {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$1"
}

# is_static ELF: whether ELF is a static executable (it names no program
# interpreter). lab-minimal's programs must be: it has no shared libraries.
is_static() {
    ! grep -q 'program interpreter' <<<"$(readelf -l "$1")"
}

# build_dropbear_static -> directory holding static `dropbear` and
# `dropbearkey`, built once from Debian's dropbear source package (the
# version apt offers for dropbear-bin, with Debian's patches) into
# $EC2LAB_CACHE/tools/dropbear-static-<version>. Static, because on KVM
# hosts that emulate the guest kernel loading the packaged dropbear's six
# shared libraries took ~4 s of every start (a static busybox starts in
# ~1 s there). The source comes through apt with a source list of its own
# (the host's apt configuration is not touched).
build_dropbear_static() (
    local ver dir work apt_dir
    ver=$(apt_candidate dropbear-bin)
    [ -n "$ver" ] || die "apt knows no dropbear-bin package"
    dir="$EC2LAB_CACHE/tools/dropbear-static-${ver//:/_}"
    if [ ! -x "$dir/dropbear" ] || [ ! -x "$dir/dropbearkey" ]; then
        ensure_pkgs dpkg-dev gcc make libc6-dev bzip2 xz-utils
        apt_dir="$EC2LAB_CACHE/apt-src"
        mkdir -p "$apt_dir/lists/partial"
        printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' \
            'Suites: bookworm bookworm-updates' 'Components: main' \
            'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
            'Types: deb-src' 'URIs: http://deb.debian.org/debian-security' \
            'Suites: bookworm-security' 'Components: main' \
            'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$apt_dir/sources.sources"
        local apt=(apt-get -q -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=/nonexistent"
            -o "Dir::Etc::sourcelist=$apt_dir/sources.sources" -o "Dir::State::Lists=$apt_dir/lists")
        [ "$(id -u)" = 0 ] && apt+=(-o APT::Sandbox::User=root)
        work=$(mktemp -d "$EC2LAB_CACHE/tools/.dropbear.XXXXXX")
        # The function runs in a subshell of its own: this goes with it,
        # however it ends.
        # shellcheck disable=SC2064 # expand now
        trap "rm -rf '$work'" EXIT
        log "building a static dropbear $ver from Debian's source package"
        "${apt[@]}" update >&2 || die "apt-get update (dropbear's source list) failed"
        (cd "$work" && "${apt[@]}" source --download-only "dropbear=$ver" >&2) \
            || die "apt-get source dropbear=$ver failed"
        (cd "$work" && dpkg-source -x ./*.dsc src >&2) || die "dpkg-source -x failed"
        # The bundled libtomcrypt/libtommath, no zlib, no login records:
        # lab-minimal keeps no utmp/wtmp/lastlog and logs nothing to syslog.
        (cd "$work/src" && ./configure --enable-static --enable-bundled-libtom --disable-zlib \
            --disable-lastlog --disable-utmp --disable-utmpx --disable-wtmp --disable-wtmpx \
            --disable-pututline --disable-pututxline --disable-syslog >"$work/configure.log" 2>&1 \
            && make -j"$(nproc)" PROGRAMS="dropbear dropbearkey" >"$work/make.log" 2>&1) \
            || { tail -20 "$work/configure.log" "$work/make.log" >&2; die "building dropbear failed"; }
        strip "$work/src/dropbear" "$work/src/dropbearkey"
        is_static "$work/src/dropbear" || die "the dropbear build is not statically linked"
        mkdir -p "$dir"
        install -m 755 "$work/src/dropbear" "$work/src/dropbearkey" "$dir/"
    fi
    printf '%s\n' "$dir"
)

# fetch_busybox -> path of a static busybox from Debian's busybox-static
# package, extracted once into $EC2LAB_CACHE/tools (the package is not
# installed on the host).
fetch_busybox() {
    local ver busybox deb
    ver=$(apt_candidate busybox-static)
    [ -n "$ver" ] || die "apt knows no busybox-static package"
    busybox="$EC2LAB_CACHE/tools/busybox-static-${ver//:/_}"
    if [ ! -x "$busybox" ]; then
        mkdir -p "$EC2LAB_CACHE/tools"
        deb=$(apt_download_deb busybox-static "$ver" "$EC2LAB_CACHE/debs")
        log "extracting /bin/busybox from ${deb##*/}"
        dpkg-deb --fsys-tarfile "$deb" | tar -xO ./bin/busybox >"$busybox.tmp"
        chmod 755 "$busybox.tmp"
        if ! is_static "$busybox.tmp"; then
            rm -f "$busybox.tmp"
            die "busybox from $deb is not statically linked"
        fi
        mv "$busybox.tmp" "$busybox"
    fi
    printf '%s\n' "$busybox"
}
