#!/bin/sh
# mmdebstrap's essential hook ($1: the new root, with only the Essential
# packages): creates the system accounts of image/system-ids.txt with their
# fixed ids, before the packages that want them are installed (adduser and
# systemd-sysusers keep an account that exists). See that file for why.
set -euf
root="$1"
table="$(dirname "$0")/../system-ids.txt"

# Whether /etc/$1 has an entry named $2.
has() { awk -F: -v n="$2" '$1 == n { found = 1 } END { exit !found }' "$root/etc/$1"; }

grep -v '^#' "$table" | while read -r kind name id rest; do
    case "$kind" in
    group)
        has group "$name" || echo "$name:x:$id:" >> "$root/etc/group"
        if [ -f "$root/etc/gshadow" ] && ! has gshadow "$name"; then
            echo "$name:!::" >> "$root/etc/gshadow"
        fi
        ;;
    user)
        # rest: GID HOME SHELL GECOS...
        set -- $rest
        gid="$1" home="$2" shell="$3"
        shift 3
        has passwd "$name" || echo "$name:x:$id:$gid:$*:$home:$shell" >> "$root/etc/passwd"
        if [ -f "$root/etc/shadow" ] && ! has shadow "$name"; then
            echo "$name:!:::::::" >> "$root/etc/shadow"
        fi
        ;;
    '') ;;
    *) echo "system-ids.txt: unknown line kind '$kind'" >&2; exit 1 ;;
    esac
done
