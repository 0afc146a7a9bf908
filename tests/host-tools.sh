# shellcheck shell=bash
# The one way CI and the test scripts get the Debian packages they run, so each of them
# works on a bare Debian 12 machine. Source it; it defines one function.
#
# need_packages PROG WANT...: each WANT is
#   CMD=PACKAGE    PACKAGE unless CMD is on PATH;
#   /PATH=PACKAGE  PACKAGE unless the file exists;
#   PACKAGE        PACKAGE unless dpkg has it installed (busybox-static: a dynamic
#                  busybox has the same /bin/busybox, and a copied initramfs needs the static one).
# As root, installs what is missing with apt-get (update first: a fresh machine has no package
# lists). Otherwise it names the packages and the apt-get line and returns 2, so that a caller
# stops before running anything. With NEED_DRY_RUN=1 it only says what it would install.
need_packages() {
    local prog="$1" want pkg pkgs=()
    shift
    for want in "$@"; do
        case "$want" in
            /*=*) [ -e "${want%%=*}" ] && continue ;;
            *=*) command -v "${want%%=*}" >/dev/null 2>&1 && continue ;;
            *) dpkg-query -W -f='${Status}' "$want" 2>/dev/null | grep -q 'ok installed' && continue ;;
        esac
        pkg="${want#*=}"
        case " ${pkgs[*]} " in *" $pkg "*) ;; *) pkgs+=("$pkg") ;; esac
    done
    [ ${#pkgs[@]} -gt 0 ] || return 0
    if [ "${NEED_DRY_RUN:-0}" = 1 ]; then
        echo "$prog: would install: ${pkgs[*]} (apt-get)"
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "$prog: needs these Debian packages: ${pkgs[*]}" >&2
        echo "  install them as root:  apt-get install --no-install-recommends ${pkgs[*]}" >&2
        echo "  (or run it as root, which installs them)" >&2
        return 2
    fi
    echo "$prog: installing ${pkgs[*]} (apt-get)" >&2
    local apt=(apt-get -o DPkg::Lock::Timeout=600)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq ||
        ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
            "${pkgs[@]}" >/dev/null; then
        echo "$prog: apt-get install ${pkgs[*]} failed" >&2
        return 1
    fi
}
