#!/bin/sh
# A test hook: notes that it ran, where and as whom, in the hook account's home.
echo "after_resume $(id -un) $(hostname)" >> "$HOME/hook-events"
