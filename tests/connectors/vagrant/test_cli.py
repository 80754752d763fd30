"""`VagrantCli`: the environment of a call, and `run` against small replay programs standing in for
`vagrant` (they print a recorded output, exit with a status, sleep or report what they were given).

One test calls the real `vagrant box list` (about half a second, no VM) when Vagrant is installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from connectors.vagrant import cli, records
from connectors.vagrant.cli import VagrantCli, VagrantError, VagrantNotInstalled, VagrantTimeout

RECORDED = Path(__file__).parent / "recorded"


def program(tmp_path: Path, body: str, name: str = "fake-vagrant") -> str:
    """A stand-in for `vagrant`: a /bin/sh script running `body`."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


# -- the environment ----------------------------------------------------------------------------------------
ALLOWED = {
    "PATH", "HOME", "LANG", "LC_ALL", "VAGRANT_HOME", "VAGRANT_CWD",
    # settings that keep Vagrant off the network and quiet
    "VAGRANT_CHECKPOINT_DISABLE", "VAGRANT_BOX_UPDATE_CHECK_DISABLE", "VAGRANT_SERVER_URL",
    "VAGRANT_IGNORE_WINRM_PLUGIN", "VAGRANT_NO_COLOR",
}


@pytest.fixture
def polluted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A worker whose own environment would change what Vagrant does, or leak a secret to it."""
    monkeypatch.setenv("VAGRANT_CWD", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("VAGRANT_DEFAULT_PROVIDER", "virtualbox")
    monkeypatch.setenv("VAGRANT_VAGRANTFILE", "Evilfile")
    monkeypatch.setenv("LABDESK_SECRET_KEY", "hunter2")
    monkeypatch.setenv("SECRET", "hunter2")
    monkeypatch.setenv("HOME", str(tmp_path / "worker-home"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'evil-bin'}:{os.environ.get('PATH', '')}")


@pytest.mark.usefixtures("polluted")
def test_environment_holds_only_its_own_keys(tmp_path: Path) -> None:
    home = tmp_path / "backend" / "vagrant.d"
    env = VagrantCli(home).environment()
    assert set(env) <= ALLOWED, set(env) - ALLOWED
    assert "hunter2" not in env.values()
    assert "VAGRANT_CWD" not in env
    assert env["VAGRANT_HOME"] == str(home)
    assert env["HOME"] != str(tmp_path / "worker-home")
    assert "evil-bin" not in env["PATH"]
    assert env["VAGRANT_CHECKPOINT_DISABLE"] == "1"
    assert env["VAGRANT_BOX_UPDATE_CHECK_DISABLE"] == "1"


@pytest.mark.usefixtures("polluted")
def test_environment_with_a_directory_sets_vagrant_cwd_to_it(tmp_path: Path) -> None:
    lab = tmp_path / "labdesk-lab-3"
    env = VagrantCli(tmp_path / "home").environment(lab)
    assert env["VAGRANT_CWD"] == str(lab)
    assert set(env) <= ALLOWED


def test_vagrant_server_url_points_at_loopback(tmp_path: Path) -> None:
    from urllib.parse import urlsplit
    import ipaddress

    host = urlsplit(VagrantCli(tmp_path / "home").environment()["VAGRANT_SERVER_URL"]).hostname
    assert host is not None and (host == "localhost" or ipaddress.ip_address(host).is_loopback)


def test_extra_env_is_added_and_wins(tmp_path: Path) -> None:
    extra = {"LIBVIRT_DEFAULT_URI": "qemu:///system", "LANG": "de_DE.UTF-8"}
    env = VagrantCli(tmp_path / "home", extra_env=extra).environment()
    assert env["LIBVIRT_DEFAULT_URI"] == "qemu:///system"
    assert env["LANG"] == "de_DE.UTF-8"


@pytest.mark.usefixtures("polluted")
def test_the_program_really_gets_only_that_environment(tmp_path: Path) -> None:
    dump = tmp_path / "env.txt"
    binary = program(tmp_path, f'env > "{dump}"')
    VagrantCli(tmp_path / "home", binary=binary, extra_env={"EXTRA": "1"}).run(
        "status", cwd=tmp_path, timeout=10, env={"LABDESK_SSH_KEY": "/k"})
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    seen.pop("PWD", None)  # set by the shell itself
    seen.pop("SHLVL", None)
    seen.pop("_", None)
    assert set(seen) <= ALLOWED | {"EXTRA", "LABDESK_SSH_KEY"}, set(seen) - ALLOWED
    assert seen["EXTRA"] == "1" and seen["LABDESK_SSH_KEY"] == "/k"
    assert seen["VAGRANT_CWD"] == str(tmp_path)
    assert seen["VAGRANT_HOME"] == str(tmp_path / "home")
    assert "hunter2" not in dump.read_text()


# -- running a program --------------------------------------------------------------------------------------
def test_machine_readable_is_appended_to_the_arguments(tmp_path: Path) -> None:
    args = tmp_path / "args.txt"
    binary = program(tmp_path, f'printf "%s\\n" "$@" > "{args}"')
    VagrantCli(tmp_path / "home", binary=binary).run("destroy", "-f", "labdesk-lab-1", timeout=10)
    assert args.read_text().splitlines() == ["destroy", "-f", "labdesk-lab-1", "--machine-readable"]


def test_a_successful_call_returns_the_parsed_records(tmp_path: Path) -> None:
    binary = program(tmp_path, f'cat "{RECORDED / "status-paused.txt"}"')
    result = VagrantCli(tmp_path / "home", binary=binary).run("status", timeout=10)
    assert result.exit_code == 0
    assert records.states(result.output) == {"lab1": "paused"}


def test_a_recorded_error_exit_becomes_a_vagrant_error(tmp_path: Path) -> None:
    binary = program(tmp_path, f'cat "{RECORDED / "error-locked.txt"}"\nexit 1')
    with pytest.raises(VagrantError) as caught:
        VagrantCli(tmp_path / "home", binary=binary).run("suspend", timeout=10)
    error = caught.value
    assert type(error) is VagrantError
    assert error.kind == "Vagrant::Errors::MachineActionLockedError"
    assert error.message.startswith("An action 'suspend' was attempted on the machine 'lab1',\nbut another process")
    assert error.exit_code == 1
    assert error.command == (binary, "suspend", "--machine-readable")
    assert "MachineActionLockedError" in str(error)


def test_a_missing_box_error_exit(tmp_path: Path) -> None:
    binary = program(tmp_path, f'cat "{RECORDED / "error-box-not-found.txt"}"\nexit 1')
    with pytest.raises(VagrantError) as caught:
        VagrantCli(tmp_path / "home", binary=binary).run("up", timeout=10)
    assert caught.value.kind == "Vagrant::Errors::BoxAddShortNotFound"
    assert "Error: Could not resolve host: vagrantcloud.com" in caught.value.message


@pytest.mark.parametrize("redirect", ["", " >&2"], ids=["stdout", "stderr"])
def test_an_early_plain_text_failure_is_an_early_failure(tmp_path: Path, redirect: str) -> None:
    binary = program(tmp_path, f'cat "{RECORDED / "error-syntax.txt"}"{redirect}\nexit 1')
    with pytest.raises(VagrantError) as caught:
        VagrantCli(tmp_path / "home", binary=binary).run("status", timeout=10)
    assert caught.value.kind == "early-failure"
    assert "There is a syntax error in the following Vagrantfile." in caught.value.message
    assert caught.value.exit_code == 1


def test_a_silent_failure_says_its_exit_status(tmp_path: Path) -> None:
    binary = program(tmp_path, "exit 3")
    with pytest.raises(VagrantError) as caught:
        VagrantCli(tmp_path / "home", binary=binary).run("status", timeout=10)
    assert caught.value.exit_code == 3
    assert "3" in caught.value.message


def test_stdin_is_dev_null(tmp_path: Path) -> None:
    seen = tmp_path / "stdin.txt"
    binary = program(tmp_path, f'readlink /proc/$$/fd/0 > "{seen}"\nread answer\necho "read:$?" >> "{seen}"')
    started = time.monotonic()
    VagrantCli(tmp_path / "home", binary=binary).run("box", "remove", "x", timeout=5)
    assert time.monotonic() - started < 3
    lines = seen.read_text().splitlines()
    assert lines[0] == "/dev/null"
    assert lines[1] != "read:0"  # end of input at once: a question is never waited on


def test_a_missing_program_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(VagrantNotInstalled) as caught:
        VagrantCli(tmp_path / "home", binary=str(tmp_path / "no-such-vagrant")).run("status", timeout=5)
    assert caught.value.kind == "not-installed"
    assert not VagrantCli(tmp_path / "home", binary=str(tmp_path / "no-such-vagrant")).installed()


def test_a_program_name_not_on_the_path_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(VagrantNotInstalled):
        VagrantCli(tmp_path / "home", binary="labdesk-no-such-vagrant-program").run("status", timeout=5)


def test_a_call_past_its_time_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    binary = program(tmp_path, f'sleep 60 &\necho $! > "{pid_file}"\nwait')
    timeout = 0.5
    started = time.monotonic()
    with pytest.raises(VagrantTimeout) as caught:
        VagrantCli(tmp_path / "home", binary=binary).run("up", timeout=timeout)
    elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + cli.KILL_GRACE
    assert caught.value.kind == "timeout"
    child = int(pid_file.read_text())
    assert wait_gone(child), f"the program's child {child} survived the time-out"


def test_a_call_that_ignores_sigterm_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "KILL_GRACE", 1.0)
    pid_file = tmp_path / "child.pid"
    binary = program(tmp_path, f"trap '' TERM\nsleep 60 &\necho $! > \"{pid_file}\"\nwait\nwait")
    started = time.monotonic()
    with pytest.raises(VagrantTimeout):
        VagrantCli(tmp_path / "home", binary=binary).run("up", timeout=0.5)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 0.5 + 1.0 + 2.0
    child = int(pid_file.read_text())
    assert wait_gone(child), f"the program's child {child} survived SIGKILL"


# -- the real Vagrant ---------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_real_vagrant_uses_the_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a VAGRANT_HOME holding a box: Vagrant lists it when pointed at it
    polluted = tmp_path / "polluted"
    box = polluted / "boxes" / "lab-VAGRANTSLASH-polluted" / "0" / "libvirt"
    box.mkdir(parents=True)
    (box / "metadata.json").write_text('{"provider": "libvirt"}')
    seen = VagrantCli(polluted).run("box", "list", timeout=60)
    assert [entry.name for entry in records.boxes(seen.output)] == ["lab/polluted"]

    monkeypatch.setenv("VAGRANT_HOME", str(polluted))
    monkeypatch.setenv("VAGRANT_CWD", str(tmp_path))
    result = VagrantCli(tmp_path / "home").run("box", "list", timeout=60)
    assert records.boxes(result.output) == []
