#!/bin/sh
# First-boot credentials of a hosted Vagrant lab made from a debian-lab box (docs/vagrant.md, "Credentials").
# LabDesk runs it once, over SSH as the account Vagrant logs in with (the box's "vagrant" user), right after
# the first `vagrant up`. Args: $1 lab user, $2 crypt(3) hash of the lab password, $3 the learner's public
# key, $4 LabDesk's service public key, $5 base64 of the VNC password file (empty: no VNC).
# Afterwards the insecure Vagrant key and the default "vagrant" password no longer open anything.
set -eu
[ "$(id -u)" -eq 0 ] || exec sudo -n sh "$0" "$@"
user=$1 hash=$2 learner_key=$3 service_key=$4 vnc=${5:-}
admin=${SUDO_USER:-root}

authorize() {  # authorize USER KEY: KEY becomes USER's only authorized key
  home=$(getent passwd "$1" | cut -d: -f6)
  install -d -o "$1" -g "$(id -gn "$1")" -m 0700 "$home/.ssh"
  printf '%s\n' "$2" > "$home/.ssh/authorized_keys"
  chown "$1:$(id -gn "$1")" "$home/.ssh/authorized_keys"
  chmod 0600 "$home/.ssh/authorized_keys"
}

usermod --password "$hash" "$user"
authorize "$user" "$learner_key"
authorize "$admin" "$service_key"
passwd -l "$admin" >/dev/null
if id grader >/dev/null 2>&1; then
  authorize grader "$service_key"
fi
home=$(getent passwd "$user" | cut -d: -f6)
if [ -n "$vnc" ] && [ -d "$home/.vnc" ]; then
  printf '%s' "$vnc" | base64 -d > "$home/.vnc/passwd"
  chown "$user:$(id -gn "$user")" "$home/.vnc/passwd"
  chmod 0600 "$home/.vnc/passwd"
  systemctl restart tigervncserver@:1.service || true
fi
