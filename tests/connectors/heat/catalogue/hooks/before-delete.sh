#!/bin/sh
# A test hook: notes that it ran, where and as whom, in the hook account's home.
echo "before_delete $(id -un) $(hostname)" >> "$HOME/hook-events"
