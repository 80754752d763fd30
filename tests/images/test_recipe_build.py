"""The Debian lab image recipe (desktop-images/recipes/debian-lab, docs/images.md).

- The build smoke test (`imagebuild`, needs LABDESK_TEST_IMAGEBUILD=1, root, debootstrap and the
  network to the Debian mirror apt uses) runs `build-image.sh --variant terminal --chroot-only` and
  inspects the tree: users, packages, enabled services, no per-VM secrets left in the image.
- The helpers the image installs are tested here without a build: the clock resync loop (with a fake
  RTC), the grader's forced command, and shellcheck over the scripts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "desktop-images/recipes/debian-lab"
FILES = RECIPE / "files"
SCRIPTS = [
    RECIPE / "build-image.sh",
    RECIPE / "customize.sh",
    RECIPE / "course-software.sh",
    FILES / "grader-run",
    FILES / "labdesk-clock-resync",
    FILES / "labdesk-firstboot",
    FILES / "profile-screen.sh",
]


# --- the build smoke test ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def terminal_chroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("LABDESK_TEST_IMAGEBUILD") != "1":
        pytest.skip("image build smoke test: set LABDESK_TEST_IMAGEBUILD=1 (root, debootstrap, Debian mirror, minutes)")
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is missing (apt-get install debootstrap)")
    out = tmp_path_factory.mktemp("image-terminal")
    started = time.monotonic()
    result = subprocess.run(
        [str(RECIPE / "build-image.sh"), "--variant", "terminal", "--chroot-only", "--out", str(out)],
        capture_output=True, text=True, timeout=2400,
    )
    print(f"build-image.sh --variant terminal --chroot-only took {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, f"build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out / "rootfs"


def _shadow(root: Path, user: str) -> str:
    for line in (root / "etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1]
    raise AssertionError(f"{user} is not in /etc/shadow")


def _groups_of(root: Path, user: str) -> set[str]:
    groups = set()
    for line in (root / "etc/group").read_text().splitlines():
        name, _, _, members = line.split(":")
        if user in members.split(","):
            groups.add(name)
    return groups


@pytest.mark.imagebuild
@pytest.mark.timeout(2700)
def test_terminal_image_users(terminal_chroot: Path):
    root = terminal_chroot
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert "learner" in passwd and passwd["learner"][6] == "/bin/bash"
    assert _shadow(root, "learner").startswith("!"), "the learner's password must be locked (injected at boot)"
    profile = (root / "home/learner/.profile").read_text()
    assert profile.endswith((FILES / "profile-screen.sh").read_text())
    assert not (root / "home/learner/.bash_profile").exists()

    assert "grader" in passwd
    assert _shadow(root, "grader") == "*", "the grader has no password (key from cloud-init)"
    assert "sudo" not in _groups_of(root, "grader")
    assert "sudo" not in _groups_of(root, "learner")
    sshd_conf = (root / "etc/ssh/sshd_config.d/10-labdesk.conf").read_text()
    assert "Match User grader" in sshd_conf and "ForceCommand /opt/labdesk/bin/grader-run" in sshd_conf
    assert os.access(root / "opt/labdesk/bin/grader-run", os.X_OK)
    assert (root / "opt/labdesk/checks").is_dir()


@pytest.mark.imagebuild
@pytest.mark.timeout(2700)
def test_terminal_image_packages_and_services(terminal_chroot: Path):
    root = terminal_chroot
    for package in ("openssh-server", "screen", "qemu-guest-agent", "chrony", "cloud-init"):
        status = subprocess.run(
            ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f=${Status}", package],
            capture_output=True, text=True,
        ).stdout
        assert status == "install ok installed", f"{package}: {status!r}"
    for package in ("xrdp", "xfce4", "tigervnc-standalone-server"):  # the terminal variant has no X
        status = subprocess.run(
            ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f=${Status}", package],
            capture_output=True, text=True,
        ).stdout
        assert "installed" not in status.split(), f"{package} is installed in the terminal variant"

    def enabled(unit: str) -> str:
        return subprocess.run(
            ["chroot", str(root), "systemctl", "is-enabled", unit], capture_output=True, text=True
        ).stdout.strip()

    for unit in ("ssh.service", "chrony.service", "cloud-init.service", "cloud-final.service",
                 "labdesk-clock-resync.service", "labdesk-firstboot.service"):
        assert enabled(unit) == "enabled", f"{unit}: {enabled(unit)}"
    # qemu-guest-agent is started by udev when the agent's virtio port appears.
    assert enabled("qemu-guest-agent.service") in {"enabled", "static", "indirect"}
    assert "makestep 1 -1" in (root / "etc/chrony/chrony.conf").read_text().splitlines()


@pytest.mark.imagebuild
@pytest.mark.timeout(2700)
def test_terminal_image_has_no_per_vm_secrets_or_caches(terminal_chroot: Path):
    root = terminal_chroot
    assert list((root / "etc/ssh").glob("ssh_host_*")) == [], "SSH host keys must be generated at first boot"
    assert (root / "etc/machine-id").read_bytes() == b"", "machine-id must be empty (systemd creates it at boot)"
    assert list((root / "var/cache/apt/archives").glob("*.deb")) == []
    assert [p for p in (root / "var/lib/apt/lists").iterdir() if p.is_file()] == []
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "root/labdesk-recipe").exists()


# --- the helpers, without a build ----------------------------------------------------------------


def test_clock_resync_steps_forward_after_a_pause_and_only_then(tmp_path: Path):
    """A fake RTC that jumps 100 s ahead of the system clock = a VM paused for 100 s; a constant
    offset (an RTC in local time) is ignored."""
    rtc = tmp_path / "rtc"
    rtc.write_text(str(int(time.time()) - 7200))  # two hours off, as an RTC in local time could be
    env = dict(os.environ, LABDESK_RTC=str(rtc), LABDESK_RESYNC_INTERVAL="0.2", LABDESK_RESYNC_DRYRUN="1")
    out = tmp_path / "out"
    with out.open("w") as sink:
        process = subprocess.Popen([str(FILES / "labdesk-clock-resync")], env=env, stdout=sink)
    try:
        time.sleep(1.0)
        # keep the RTC ticking with the clock, then jump it: the clock fell 100 s behind
        rtc.write_text(str(int(time.time()) - 7200 + 100))
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while time.monotonic() < deadline and not lines:
            time.sleep(0.1)
            lines = out.read_text().splitlines()
        assert lines, "no step after the RTC jumped ahead"
        behind = int(lines[0].split()[1])
        assert lines[0].startswith("step ") and 99 <= behind <= 101, lines
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_clock_resync_ignores_a_steady_offset(tmp_path: Path):
    rtc = tmp_path / "rtc"
    env = dict(os.environ, LABDESK_RTC=str(rtc), LABDESK_RESYNC_INTERVAL="0.2", LABDESK_RESYNC_DRYRUN="1")
    rtc.write_text(str(int(time.time()) + 3600))
    process = subprocess.Popen([str(FILES / "labdesk-clock-resync")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(8):  # the RTC keeps ticking along with the clock, one hour ahead
            rtc.write_text(str(int(time.time()) + 3600))
            time.sleep(0.2)
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=5)
    assert out == ""


def test_clock_resync_exits_quietly_without_an_rtc(tmp_path: Path):
    env = dict(os.environ, LABDESK_RTC=str(tmp_path / "missing"), LABDESK_RESYNC_DRYRUN="1")
    result = subprocess.run([str(FILES / "labdesk-clock-resync")], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and "cannot read the RTC" in result.stderr


@pytest.mark.parametrize(
    ("command", "status", "expected"),
    [
        ("exercise1 --name=alice", 0, "ran exercise1 --name=alice"),
        ("exercise1; rm -rf /", 126, "refused argument: exercise1;"),
        ("../bin/sh", 126, "no such check: ../bin/sh"),
        ("missing", 126, "no such check: missing"),
        ("", 126, "usage:"),
        ("exercise1 $(id)", 126, "refused argument: $(id)"),
    ],
)
def test_grader_runs_only_checks(tmp_path: Path, command: str, status: int, expected: str):
    checks = tmp_path / "checks"
    checks.mkdir()
    check = checks / "exercise1"
    check.write_text('#!/bin/sh\necho "ran exercise1 $*"\n')
    check.chmod(0o755)
    env = dict(os.environ, LABDESK_CHECKS_DIR=str(checks), SSH_ORIGINAL_COMMAND=command)
    result = subprocess.run([str(FILES / "grader-run")], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == status
    assert expected in result.stdout + result.stderr


def test_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is missing (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-x", "-s", "bash", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=RECIPE
    )
    assert result.returncode == 0, result.stdout
