# LabDesk: every connection reattaches to the one session (created on the first), so a dropped
# network, a suspend/resume or a second tab finds the terminal exactly as it was.
if [ -z "$STY" ] && [ -n "$SSH_CONNECTION" ] && command -v screen >/dev/null; then
  exec /usr/bin/screen -xRR
fi
