#!/bin/sh
# Runs inside the root (chroot) on every build, after image/overlay and the
# MaculaOS binaries were copied in. Keep it fast and idempotent.
set -eu

# sudo refuses drop-ins that are group- or world-writable; git keeps no modes.
chmod 0440 /etc/sudoers.d/*

systemctl enable --quiet systemd-networkd.service systemd-resolved.service ssh.service \
    maculaos-apply.service maculaos-config-url.service \
    maculaos-boot-check.service maculaos-mark-good.service maculaos-upgrade-check.timer \
    maculaos-install.service maculaos-agent.service maculaos-firstboot.service \
    maculaos-nats.service maculaos-meshd.service maculaos-mesh-apply.path \
    avahi-daemon.service
# Nor maculaos-git.service: apply enables it while maculaos.gitops is on.
# Not maculaos-backup.timer: `maculaos apply` enables it when
# maculaos.backup.enabled is true.
# The embedded services' own units, which their packages enable: `maculaos
# apply` enables each one the configuration switches on, at every boot.
# Every unit apply switches must be disabled here: at boot it takes them
# to be (crates/apply/src/units.rs) and does not ask systemd.
systemctl disable --quiet prometheus-node-exporter.service mosquitto.service \
    systemd-journal-upload.service maculaos-git.service maculaos-backup.timer
systemctl set-default --quiet multi-user.target
# The root is read-only at run time: the mount point the guide uses for an
# update stick (`maculaos upgrade --from /mnt/usb/`) must exist in the image.
mkdir -p /mnt/usb
# avahi-daemon speaks mDNS over IPv4 only. avahi 0.8 can take its own probe
# for another host's when an interface's IPv6 address changes while it is
# announcing (link-local first, then the prefix a router advertises), and
# then gives the node up as NAME-2 for good (avahi issue 193); a slow boot
# widens that window. Names then resolve to IPv4 addresses only (on an
# edge LAN: DHCP or IPv4 link-local); the agent's mdns-name check claims a
# lost name back whatever the cause.
sed -i 's/^#\?use-ipv6=.*/use-ipv6=no/' /etc/avahi/avahi-daemon.conf
grep -qx 'use-ipv6=no' /etc/avahi/avahi-daemon.conf
# The mesh plane runs as maculaos-nats.service, from the configuration
# maculaos apply writes; Debian's own unit (which its package enables) would
# start a second server on the same port.
systemctl mask --quiet nats-server.service
# systemd runs every generator at boot (and at each daemon-reload); under
# emulation each costs ~0.1-0.2 s of CPU. None of these has input on a node:
# no crypttab, integritytab or veritytab, an fstab that lists nothing (the
# initramfs mounts root, /etc, /var), no SysV scripts without a native unit,
# no rc.local, no hibernation, no offline system updates, and partitions
# found by GPT type must not be mounted on their own (the ESP, the other
# slot). Kept, among others: the getty generator (serial console) and the
# debug generator (systemd.mask= and friends, via maculaos_extra_cmdline).
# (When encryption at rest lands, unmask cryptsetup, integritysetup and
# veritysetup: they read /etc/crypttab and friends.) A name that does not
# exist fails the build: a silent no-op mask would bring the cost back.
must_exist() { # FILE...
    for f; do
        [ -e "$f" ] || { echo "finalize.sh: nothing to mask: no $f" >&2; exit 1; }
    done
}
mask_generator() { # DIR NAME
    must_exist "/usr/lib/systemd/$1/$2"
    mkdir -p "/etc/systemd/$1"
    ln -sfn /dev/null "/etc/systemd/$1/$2"
}
for g in cryptsetup fstab gpt-auto hibernate-resume integritysetup rc-local run \
    system-update sysv veritysetup; do
    mask_generator system-generators "systemd-$g-generator"
done
# No desktop autostart entries for an SSH session's user manager.
mask_generator user-generators systemd-xdg-autostart-generator
# systemd-repart has nothing to do (maculaos-init grows the data partition),
# yet, skipped, it still pulled in dm_mod and loop; logind pulls in drm for
# graphical seats a headless node lacks (a GPU's driver loads drm anyway).
must_exist /usr/lib/systemd/system/systemd-repart.service /usr/lib/systemd/system/modprobe@.service
systemctl mask --quiet systemd-repart.service modprobe@drm.service
# Not needed on a node that waits for nothing but its own network.
systemctl mask --quiet systemd-networkd-wait-online.service
# Podman's own units, which its package enables: each service runs from
# its own unit (maculaos-svc-NAME.service, written by maculaos apply), so
# podman's restart-at-boot and daily auto-update have nothing to do but cost
# boot time, and its API socket would be a root API nobody here uses.
must_exist /usr/lib/systemd/system/podman.socket /usr/lib/systemd/system/podman-restart.service \
    /usr/lib/systemd/system/podman-auto-update.timer
systemctl mask --quiet podman.socket podman.service podman-restart.service \
    podman-auto-update.timer podman-auto-update.service
# Podman runs on netavark; the package's CNI network file names plugins the
# image does not have, and podman warned about it on an operator's first
# command.
must_exist /etc/cni/net.d/87-podman-bridge.conflist
rm /etc/cni/net.d/87-podman-bridge.conflist
# Nothing on a node installs or updates packages (the root is read-only and
# an update replaces it whole), and there is no LVM for e2scrub to check:
# these would only spend CPU at every boot and on their schedules.
systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service
# The package database describes the read-only root, and nothing installs
# packages on a node: keep it in the image, where it always matches the
# running slot (a copy in /var would describe the first slot ever booted),
# and where a first boot need not copy its ~1000 files into /var.
if [ ! -L /var/lib/dpkg ]; then
    rm -rf /usr/lib/maculaos/dpkg
    mv /var/lib/dpkg /usr/lib/maculaos/dpkg
    ln -s ../../usr/lib/maculaos/dpkg /var/lib/dpkg
fi
