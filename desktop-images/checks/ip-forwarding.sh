#!/bin/sh
# Check (router): IPv4 forwarding is on, so the two clients can reach each other through it.
# Exit 0 passes; the first line printed is the feedback.
if [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)" = "1" ]; then
  echo "The router forwards IPv4 packets."
else
  echo "IPv4 forwarding is off on the router (sysctl net.ipv4.ip_forward)."
  exit 1
fi
