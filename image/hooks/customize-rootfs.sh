#!/bin/sh
# Runs once per package set, as mmdebstrap's customize hook: $1 is the new root.
# Its result is cached with the root filesystem, so put here only what depends
# on the packages, not on MaculaOS's own files (those go in finalize.sh).
set -eu
root="$1"

# The admin user of seed 4.5 (macula@macula-XXXX): sudo, key-only SSH, no password.
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo,systemd-journal --comment "MaculaOS admin" macula
chroot "$root" passwd --lock macula >/dev/null
chroot "$root" passwd --lock root >/dev/null

# The git server's account (maculaos.gitops, `ssh://git@NODE:23231/REPO.git`;
# made with its fixed id by system-ids.sh): its own sshd lets it in by key
# only and runs nothing but git for it; the main sshd denies it. No password
# (`*`, not locked: sshd without PAM refuses keys of a locked account).
chroot "$root" usermod --password '*' git

# Every system account has the id image/system-ids.txt gives it, and none
# is missing there: files on /var, kept across updates, are owned by these
# ids.
table="$(dirname "$0")/../system-ids.txt"
awk -v table="$table" '
    BEGIN {
        while ((getline line < table) > 0) {
            if (line ~ /^#/ || line == "") continue
            split(line, f, " ")
            if (f[1] == "group") want["group:" f[2]] = f[3]
            if (f[1] == "user") want["passwd:" f[2]] = f[3] ":" f[4]
        }
        FS = ":"
    }
    {
        db = FILENAME; sub(".*/", "", db)
        id = (db == "passwd") ? $3 ":" $4 : $3
        if ($3 < 100 || $3 > 999) next
        seen[db ":" $1] = 1
        if (!((db ":" $1) in want)) {
            printf "system-ids.txt: the %s entry %s (%s) is not pinned: add it there with these ids\n", db, $1, id
            bad = 1
        } else if (want[db ":" $1] != id) {
            printf "system-ids.txt: %s %s has %s, the table says %s\n", db, $1, id, want[db ":" $1]
            bad = 1
        }
    }
    END {
        for (k in want) if (!(k in seen)) { printf "system-ids.txt: %s is not in the image\n", k; bad = 1 }
        exit bad
    }
' "$root/etc/passwd" "$root/etc/group" >&2

# Host keys are per machine: maculaos-init creates them on first boot under
# /var/lib/maculaos/ssh. Keys baked into an image would be shared by every node.
rm -f "$root"/etc/ssh/ssh_host_*

# Resolution through systemd-resolved; networkd feeds it.
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# Reproducibility: drop caches and logs whose content depends on build time.
rm -rf "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
       "$root"/var/cache/apt/*.bin "$root"/var/cache/ldconfig/aux-cache
: > "$root/etc/machine-id"

# mmdebstrap copies the build host's name; `maculaos apply` sets macula-XXXX at boot.
echo macula > "$root/etc/hostname"
