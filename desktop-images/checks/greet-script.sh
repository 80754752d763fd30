#!/bin/sh
# Check: ~/bin/greet is an executable that prints "hello".
# $1 is the lab user (default: learner). Exit 0 passes; the first line printed is the feedback.
user=${1:-learner}
home=$(getent passwd "$user" | cut -d: -f6)
script="${home:-$HOME}/bin/greet"
if [ ! -x "$script" ]; then
  echo "~/bin/greet is missing or not executable (chmod +x)."
  exit 1
fi
if "$script" 2>/dev/null | grep -qi '^hello'; then
  echo "~/bin/greet says hello."
else
  echo "~/bin/greet runs but does not print hello."
  exit 1
fi
