#!/bin/sh
# Check: the GPU is visible to the driver (nvidia-smi lists at least one device).
# Exit 0 passes; the first line printed is the feedback.
if devices=$(nvidia-smi -L 2>/dev/null) && [ -n "$devices" ]; then
  echo "$devices" | head -n 1
else
  echo "No GPU visible: is the NVIDIA driver loaded?"
  exit 1
fi
