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

# The git server's account (maculaos.gitops, `ssh://git@NODE:23231/REPO.git`):
# its own sshd lets it in by key only and runs nothing but git for it; the
# main sshd denies it. No password (`*`, not locked: sshd without PAM
# refuses keys of a locked account).
chroot "$root" useradd --system --user-group --no-create-home --home-dir /var/lib/git \
    --shell /bin/sh --comment "MaculaOS git server" git
chroot "$root" usermod --password '*' git

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
