#!/bin/bash
# LabDesk lab image: turn a fresh Debian 12 (bookworm) system into a lab image.
#
# Runs as root inside the target system: in the debootstrap chroot of build-image.sh, in a VM booted by
# Packer (packer/debian-lab.pkr.hcl), or by hand in any Debian 12 VM. It needs this directory next to it
# (files/, course-software.sh). Idempotent: running it twice gives the same result.
#
#   customize.sh --variant desktop|terminal
#
# Steps: packages → lab user "learner" (no password; ~/.profile reattaches SSH to screen) → "grader"
# (key from cloud-init, forced command) → time resync after resume → services → course-software.sh →
# clean-up (apt caches, machine-id, SSH host keys and TLS keys, regenerated at first boot).
# docs/images.md explains each step.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
HERE=$(cd "$(dirname "$0")" && pwd)
FILES="$HERE/files"
VARIANT=${LABDESK_VARIANT:-desktop}

while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT=${2:?--variant needs desktop or terminal}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "customize.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$VARIANT" in desktop|terminal) ;; *) echo "customize.sh: --variant must be desktop or terminal" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "customize.sh: run as root" >&2; exit 1; }

step() { echo "== customize ($VARIANT): $*"; }
apt_install() { apt-get install -y -q --no-install-recommends "$@"; }

step "packages"
apt-get update -q
# Base of every lab VM: init, network by DHCP (cloud-init configures the rest), the guest agent
# (the broker's connectors and Nova use it, e.g. to set the time after resume), chrony, ssh, screen.
apt_install \
  systemd-sysv udev dbus kmod e2fsprogs iproute2 netbase procps \
  ca-certificates less nano vim-tiny sudo locales \
  openssh-server screen qemu-guest-agent cloud-init cloud-guest-utils chrony
# A network stack only where there is none (a debootstrap tree); a cloud image keeps its own.
network_fallback=0
if ! dpkg -s ifupdown netplan.io 2>/dev/null | grep -q '^Status: install ok installed' \
   && ! ls /etc/systemd/network/*.network >/dev/null 2>&1; then
  apt_install ifupdown isc-dhcp-client
  network_fallback=1
fi
if [ "$VARIANT" = desktop ]; then
  # A light XFCE desktop, reachable by RDP (xrdp + xorgxrdp, port 3389) and by VNC (TigerVNC, :1 = 5901).
  apt_install \
    xfce4 xfce4-terminal dbus-x11 at-spi2-core fonts-dejavu-core xfonts-base mousepad \
    xrdp xorgxrdp ssl-cert tigervnc-standalone-server tigervnc-tools
fi
# With that stack: DHCP on every NIC (the usual virtio names), and cloud-init leaves the network alone
# (its ENI file would define the same interfaces twice). Labs needing static addresses configure them
# in course-software.sh. A cloud image (Packer) keeps its own network set-up instead.
if [ "$network_fallback" = 1 ]; then
  install -m 0644 "$FILES/network/interfaces" /etc/network/interfaces
  install -m 0644 "$FILES/network/90-labdesk-network.cfg" /etc/cloud/cloud.cfg.d/90-labdesk-network.cfg
fi
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen && locale-gen >/dev/null

step "lab user learner (no password: cloud-init or the connector injects the password/key at boot)"
if ! id learner >/dev/null 2>&1; then
  useradd --create-home --user-group --shell /bin/bash --comment "LabDesk learner" learner
fi
passwd --lock learner >/dev/null
# The grader reads the learner's work through the learner group (home 0750).
chmod 0750 /home/learner
profile=/home/learner/.profile
[ -f "$profile" ] || cp /etc/skel/.profile "$profile"
snippet="$FILES/profile-screen.sh"
if ! grep -qF 'exec /usr/bin/screen -xRR' "$profile"; then
  printf '\n' >> "$profile"
  cat "$snippet" >> "$profile"
fi
# bash reads ~/.bash_profile or ~/.bash_login instead of ~/.profile when they exist: keep them absent.
rm -f /home/learner/.bash_profile /home/learner/.bash_login
chown learner:learner "$profile"
if [ "$VARIANT" = desktop ]; then
  install -d -o learner -g learner -m 0700 /home/learner/.vnc
  install -o learner -g learner -m 0644 "$FILES/tigervnc/config" /home/learner/.vnc/config
  grep -qs '^:1=learner$' /etc/tigervnc/vncserver.users || echo ':1=learner' >> /etc/tigervnc/vncserver.users
fi

step "grader account (no password, key from cloud-init, only /opt/labdesk/checks)"
if ! id grader >/dev/null 2>&1; then
  useradd --create-home --user-group --shell /bin/bash --comment "LabDesk grader" grader
fi
usermod --password '*' --groups learner grader   # no password (not locked: sshd without PAM would refuse)
install -d -o grader -g grader -m 0700 /home/grader/.ssh
install -d -m 0755 /opt/labdesk /opt/labdesk/bin /opt/labdesk/checks
install -m 0755 "$FILES/grader-run" /opt/labdesk/bin/grader-run
install -m 0644 "$FILES/sshd/10-labdesk.conf" /etc/ssh/sshd_config.d/10-labdesk.conf

step "time resync after resume (chrony makestep 1 -1 + labdesk-clock-resync)"
sed -i -f "$FILES/chrony/makestep.sed" /etc/chrony/chrony.conf
grep -q '^makestep 1 -1$' /etc/chrony/chrony.conf || echo 'makestep 1 -1' >> /etc/chrony/chrony.conf
install -m 0755 "$FILES/labdesk-clock-resync" /usr/local/sbin/labdesk-clock-resync
install -m 0755 "$FILES/labdesk-firstboot" /usr/local/sbin/labdesk-firstboot
install -m 0644 "$FILES/systemd/labdesk-clock-resync.service" "$FILES/systemd/labdesk-firstboot.service" \
  /etc/systemd/system/

step "services"
systemctl enable ssh.service chrony.service labdesk-clock-resync.service labdesk-firstboot.service \
  cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service
# qemu-guest-agent starts when its virtio port appears (udev); enabling covers an [Install] section too.
systemctl enable qemu-guest-agent.service 2>/dev/null || true
if [ "$VARIANT" = desktop ]; then
  systemctl enable xrdp.service tigervncserver@:1.service
  systemctl set-default graphical.target
else
  systemctl set-default multi-user.target
fi

step "course software (course-software.sh)"
# shellcheck source=course-software.sh
LABDESK_VARIANT=$VARIANT bash "$HERE/course-software.sh"

step "clean-up (apt caches, machine-id, SSH host keys, TLS keys)"
apt-get -y -q autoremove --purge
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/*.log /tmp/* /var/tmp/*
rm -f /etc/ssh/ssh_host_*
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/xrdp/rsakeys.ini
rm -f /var/lib/labdesk/firstboot-done
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id && ln -s /etc/machine-id /var/lib/dbus/machine-id
cloud-init clean --logs >/dev/null 2>&1 || true
rm -f /root/.bash_history /home/*/.bash_history
step "done"
