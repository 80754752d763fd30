"""Grading hooks: runners that run one check script on one machine of a learner's lab (broker.grading).

Each is an entry point of the `labdesk.grading_hooks` group (pyproject.toml), named by the `runner` of
the `CheckTarget` a connector returns:

- `ssh` (grading_hooks.ssh): over SSH as the image's `grader` account, never the learner's; with the
  image's forced `grader-run` command the script goes on stdin to `grader-run run-script`.
- `local` (grading_hooks.local): a subprocess on the LabDesk host, for labs of the `local` connector.
- `guest_agent`: not yet; the libvirt connector's issue adds it (QEMU guest agent `guest-exec` where a
  lab has no SSH).

Runners import only broker.grading, broker.errors and broker.remote (.importlinter).
"""
