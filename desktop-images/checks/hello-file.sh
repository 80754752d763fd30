#!/bin/sh
# Check: the lab user has created ~/hello.txt and written something in it.
# Checks run as the grader account; $1 is the lab user (default: learner). Exit 0 passes; the first
# line printed is the feedback the learner sees.
user=${1:-learner}
home=$(getent passwd "$user" | cut -d: -f6)
file="${home:-$HOME}/hello.txt"
if [ -s "$file" ]; then
  echo "Found ~/hello.txt."
else
  echo "~/hello.txt is missing or empty."
  exit 1
fi
