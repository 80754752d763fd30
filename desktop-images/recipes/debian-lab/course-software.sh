#!/bin/bash
# LabDesk: THE file a course team edits to add its own software to the lab image.
#
# customize.sh runs it as root, after the base system, the users and the services, and before the
# clean-up (so apt caches and temporary files you leave are removed for you). It runs in the build
# chroot, or in the VM when the image is built with Packer — there are no running services here.
# $LABDESK_VARIANT is "desktop" or "terminal". Keep it idempotent (it may run twice) and non-interactive.
#
# Useful places:
#   /home/learner            the learner's home (owner learner:learner, mode 0750)
#   /etc/skel                copied into homes created later
#   /opt/labdesk/checks      grading checks: executables the grader account may run
#                            (`ssh grader@<vm> <check> [args]`; see docs/images.md)
# Then rebuild: build-image.sh --variant terminal|desktop --out DIR   (docs/images.md)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# --- Example (remove the leading "# " to use it) --------------------------------------------------
# apt-get install -y -q --no-install-recommends python3 python3-pytest git build-essential
# if [ "$LABDESK_VARIANT" = desktop ]; then
#   apt-get install -y -q --no-install-recommends wireshark-qt
# fi
# install -d -o learner -g learner /home/learner/exercises
# printf 'Welcome to the lab.\n' > /home/learner/exercises/README.txt
# chown learner:learner /home/learner/exercises/README.txt
# cat > /opt/labdesk/checks/exercise1 <<'CHECK'
# #!/bin/sh
# # exit 0 = passed; what it prints is shown to the learner
# test -f /home/learner/exercises/answer.txt && grep -q 42 /home/learner/exercises/answer.txt
# CHECK
# chmod 0755 /opt/labdesk/checks/exercise1
# ---------------------------------------------------------------------------------------------------

echo "course-software.sh: nothing to add (edit this file to add your course's software)"
