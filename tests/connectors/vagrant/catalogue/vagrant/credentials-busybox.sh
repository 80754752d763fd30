#!/bin/sh
# First-boot credentials for a busybox guest (no usermod, no chpasswd): the contract of
# connectors/vagrant/credentials.py. Args: user, password hash, learner key, service key, VNC file (unused).
set -eu
user=$1 hash=$2 learner_key=$3 service_key=$4
awk -F: -v OFS=: -v u="$user" -v h="$hash" '$1 == u { $2 = h } $1 == "root" { $2 = "!" } { print }' /etc/shadow > /etc/shadow.labdesk
cat /etc/shadow.labdesk > /etc/shadow
rm -f /etc/shadow.labdesk
home=$(awk -F: -v u="$user" '$1 == u { print $6 }' /etc/passwd)
mkdir -p "$home/.ssh"
printf '%s\n' "$learner_key" > "$home/.ssh/authorized_keys"
chown -R "$user" "$home/.ssh"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
printf '%s\n' "$service_key" > /root/.ssh/authorized_keys
