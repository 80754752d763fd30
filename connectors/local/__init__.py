"""The local connector: each lab is a real X desktop (Xvfb + x11vnc) on the broker's own host."""
