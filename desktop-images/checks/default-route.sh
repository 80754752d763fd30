#!/bin/sh
# Check (client): the default route goes through a gateway (the router), not straight out.
# Exit 0 passes; the first line printed is the feedback.
via=$(ip -4 route show default 2>/dev/null | awk '/^default via/ {print $3; exit}')
if [ -n "$via" ]; then
  echo "Default route via $via."
else
  echo "This client has no default route through the router yet."
  exit 1
fi
