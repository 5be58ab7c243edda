#!/usr/bin/env bash
# Debian packages with apt-get, as root, for the project's scripts (chromium.sh, fashion_mnist.sh,
# services.sh): `apt-get update` then `apt-get install`, retried, because a package mirror or
# proxy that fails one fetch (apt's exit 100) is the usual cause of a failed install on a fresh
# machine, and a retry a few seconds later is the usual cure.
#
#   scripts/apt_install.sh [--no-recommends] [--log FILE] PKG...
#
# Exit 0: installed. Exit 3: not a root shell with apt-get (nothing tried; the caller says what
# that means for it). Otherwise apt-get's own exit status after the last try, with the tail of
# apt's output on stderr and the whole of it in the log.
#
# Settings (environment):
#   BB_APT_TRIES  tries in all (default 3)
#   BB_APT_WAIT   seconds before the second try, doubled before each next one (default 10)
# apt waits up to 5 minutes for another apt or dpkg to let go of its locks (DPkg::Lock::Timeout).
set -euo pipefail
umask 077

recommends=() log=""
while (($#)); do
    case $1 in
    --no-recommends) recommends=(--no-install-recommends) ;;
    --log) log=$2 && shift ;;
    --) shift && break ;;
    -*) echo "apt_install.sh: unknown option $1 (expected --no-recommends, --log FILE, then packages)" >&2 && exit 2 ;;
    *) break ;;
    esac
    shift
done
(($#)) || { echo "apt_install.sh: no package named (usage: apt_install.sh [--no-recommends] [--log FILE] PKG...)" >&2 && exit 2; }

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "apt_install.sh: cannot install $*: this is not a root shell with apt-get" >&2
    exit 3
fi

# The log: the caller's file (in a folder of its own it checked), else a new private folder
# (mktemp makes it, 0700: no path another user could have made first).
own_dir=""
if [[ -z $log ]]; then
    own_dir=$(mktemp -d /tmp/bb-apt.XXXXXX)
    log=$own_dir/apt.log
fi
: >"$log"

tries=${BB_APT_TRIES:-3} wait_s=${BB_APT_WAIT:-10} rc=0
apt=(apt-get -q -o DPkg::Lock::Timeout=300)
for ((try = 1; try <= tries; try++)); do
    echo "--- try $try of $tries: apt-get update && apt-get install ${recommends[*]} $*" >>"$log"
    rc=0
    "${apt[@]}" update >>"$log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y "${recommends[@]}" "$@" >>"$log" 2>&1 || rc=$?
    if ((rc == 0)); then
        [[ -n $own_dir ]] && rm -rf "$own_dir"
        exit 0
    fi
    if ((try < tries)); then
        echo "apt_install.sh: apt-get failed (exit $rc) on try $try of $tries; trying again in ${wait_s} s" >&2
        sleep "$wait_s"
        wait_s=$((wait_s * 2))
    fi
done
{
    echo "apt_install.sh: apt-get install $* failed (exit $rc) $tries times; the last lines of $log:"
    tail -n 15 "$log" | sed 's/^/  | /'
} >&2
exit "$rc"
