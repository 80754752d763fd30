"""Check definitions and scores (broker.checks): what an image version asks to be checked, the built-in
checks' generated scripts run for real under /bin/sh, and the weighted score."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.catalogue import load
from broker.checks import CheckDefinition, CheckError, builtin_script, checks_of, max_score_of, score_of
from tests.catalogue import ENTRY, make_root, write_entry

NOBODY = "no-such-user-here"  # not in passwd: the scripts fall back to $HOME, as for the local runner


# -- the score -------------------------------------------------------------------------------------------
def results(*states_and_weights: tuple[str, float]) -> list[dict[str, object]]:
    return [{"state": state, "weight": weight} for state, weight in states_and_weights]


def test_the_score_is_the_weighted_pass_ratio_times_the_maximum() -> None:
    three = results(("passed", 1), ("failed", 2), ("passed", 3))
    assert score_of(three, 10) == pytest.approx(6.666667) and score_of(three, 10) == round(40 / 6, 6)
    assert score_of(results(("passed", 1), ("failed", 1), ("error", 1), ("passed", 1)), 4) == 2
    assert score_of(results(("failed", 5), ("passed", 5)), 100) == 50


def test_all_passed_is_exactly_the_maximum_and_none_is_zero() -> None:
    tricky = results(("passed", 0.1), ("passed", 0.2), ("passed", 0.7))
    assert score_of(tricky, 3) == 3.0  # not 2.9999999999999996
    assert score_of(results(("failed", 1), ("error", 2), ("pending", 1)), 10) == 0.0
    assert score_of([], 10) == 0.0


# -- definitions from an image version -------------------------------------------------------------------
CHECKS = '''
[[checks]]
id = "notes"
title = "Write ~/notes.txt"
builtin = "file-exists"
path = "~/notes.txt"
hint = "Save it in your home folder."
timeout = 5
weight = 3

[[checks]]
id = "greeting"
title = "Say hello"
builtin = "command-succeeds"
command = "test \\"$1\\" = learner"
args = ["learner", "extra"]
'''


def spec_of(tmp_path: Path, text: str = ENTRY + CHECKS) -> dict[str, object]:
    root = make_root(tmp_path)
    (root / "checks" / "hello-file.sh").write_text("#!/bin/sh\necho checked\n")
    return load(write_entry(root, "lab", text)).spec()


def test_an_image_versions_checks_as_definitions(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    script, notes, greeting = checks_of(spec)
    assert script == CheckDefinition("hello-file", "Create ~/hello.txt", 2.0, "main", "", 30.0, "#!/bin/sh\necho checked\n", ("learner",))
    assert (notes.weight, notes.hint, notes.timeout, notes.args) == (3.0, "Save it in your home folder.", 5.0, ("learner",))
    assert notes.script.startswith("#!/bin/sh\n") and "notes.txt" in notes.script
    assert greeting.args == ("learner", "extra") and greeting.host == "main"
    assert max_score_of(spec) == 6  # 2 + 3 + 1, the catalogue's default max_score


def test_the_lab_user_is_the_default_argument_of_a_spec_without_args() -> None:
    spec = {"lab_user": {"name": "student"}, "checks": [{"id": "a", "title": "A", "script": "#!/bin/sh\n", "weight": 2}]}
    (check,) = checks_of(spec)
    assert (check.args, check.host, check.timeout) == (("student",), "", 30.0)
    assert checks_of(spec, "alice")[0].args == ("alice",)
    assert max_score_of(spec) == 2 and max_score_of({**spec, "max_score": 10}) == 10
    assert checks_of({}) == [] and checks_of(None) == [] and checks_of({"checks": "nonsense"}) == []


def test_a_version_imported_before_scripts_were_embedded(tmp_path: Path) -> None:
    """Such a version named the file: its script is read from the shipped catalogue, as it was then; a
    built-in is generated again; a file that is not there is a clear error."""
    (old,) = checks_of({"checks": [{"id": "hello-file", "title": "Hello", "run": "checks/hello-file.sh"}]})
    assert "hello.txt" in old.script and old.script.startswith("#!/bin/sh")
    (builtin,) = checks_of({"checks": [{"id": "f", "title": "F", "builtin": "file-exists", "path": "x"}]})
    assert builtin.script.startswith("#!/bin/sh") and 'file="$home"/x\n' in builtin.script
    with pytest.raises(CheckError, match="check 'gone' has no script in this image version"):
        checks_of({"checks": [{"id": "gone", "title": "Gone", "run": "checks/nowhere.sh"}]})
    with pytest.raises(CheckError):
        checks_of({"checks": [{"id": "up", "title": "Up", "run": "../broker/checks.py"}]})


# -- the built-in checks, run for real -------------------------------------------------------------------
def run_script(script: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = home.parent / "check.sh"
    path.write_text(script)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    return subprocess.run(["/bin/sh", str(path), *args], env=env, cwd=home, capture_output=True, text=True, timeout=30)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def test_file_exists(home: Path) -> None:
    script = builtin_script("file-exists", NOBODY, path="~/notes.txt")
    missing = run_script(script, home)
    assert (missing.returncode, missing.stdout) == (1, "~/notes.txt does not exist.\n")
    (home / "notes.txt").write_text("")
    found = run_script(script, home, NOBODY)
    assert (found.returncode, found.stdout, found.stderr) == (0, "Found ~/notes.txt.\n", "")


def test_file_exists_relative_absolute_and_awkward_paths(home: Path, tmp_path: Path) -> None:
    (home / "work").mkdir()
    (home / "work" / "out file's \"copy\".txt").write_text("x")
    assert run_script(builtin_script("file-exists", NOBODY, path="work/out file's \"copy\".txt"), home).returncode == 0
    assert run_script(builtin_script("file-exists", NOBODY, path="~"), home).returncode == 0
    outside = tmp_path / "etc-motd"
    assert run_script(builtin_script("file-exists", NOBODY, path=str(outside)), home).returncode == 1
    outside.write_text("hi")
    assert run_script(builtin_script("file-exists", NOBODY, path=str(outside)), home).returncode == 0


def test_the_lab_user_s_home_comes_from_passwd(home: Path) -> None:
    """$1 names the lab user; their home is looked up (root's is /root), not the grader's $HOME."""
    root_home = Path(os.path.expanduser("~root"))
    assert root_home.is_dir()
    probe = f"probe-{os.getpid()}.txt"
    script = builtin_script("file-exists", "root", path=f"~/{probe}")
    assert run_script(script, home, "root").stdout == f"~/{probe} does not exist.\n"
    (home / probe).write_text("")
    assert run_script(script, home, "root").returncode == 1  # still not in /root
    assert run_script(script, home, NOBODY).returncode == 0


def test_file_contains(home: Path) -> None:
    script = builtin_script("file-contains", NOBODY, path="~/report.txt", pattern="^Result: [0-9]+$")
    assert run_script(script, home).stdout == "~/report.txt does not exist.\n"
    (home / "report.txt").write_text("notes\nResult: many\n")
    wrong = run_script(script, home)
    assert (wrong.returncode, wrong.stdout) == (1, "~/report.txt does not have the expected content yet.\n")
    (home / "report.txt").write_text("notes\nResult: 42\n")
    right = run_script(script, home)
    assert (right.returncode, right.stdout) == (0, "~/report.txt has the expected content.\n")


def test_patterns_and_paths_are_data_not_shell(home: Path) -> None:
    """Quotes, `$(…)` and backquotes in a catalogue value are never run by the generated script."""
    (home / "f.txt").write_text("it's '; touch pwned3; echo '\n")
    assert run_script(builtin_script("file-contains", NOBODY, path="f.txt", pattern="'; touch pwned3; echo '"), home).returncode == 0
    for evil in ("$(touch pwned1)", "`touch pwned2`", "'; touch pwned3; echo '", '"; touch pwned4; echo "'):
        run_script(builtin_script("file-contains", NOBODY, path="f.txt", pattern=evil), home)
        assert run_script(builtin_script("file-exists", NOBODY, path=evil), home).returncode == 1
        assert run_script(builtin_script("file-exists", NOBODY, path=f"~/{evil}"), home).returncode == 1
    assert not list(home.glob("pwned*"))


def test_command_succeeds(home: Path) -> None:
    script = builtin_script("command-succeeds", NOBODY, command='test -d "$LAB_HOME/project" && test "$1" = alice')
    failed = run_script(script, home, "alice")
    assert (failed.returncode, failed.stdout) == (1, "The check command failed (exit status 1).\n")
    (home / "project").mkdir()
    assert run_script(script, home, "bob").returncode == 1
    passed = run_script(script, home, "alice")
    assert (passed.returncode, passed.stdout) == (0, "The check command succeeded.\n")


def test_a_failing_command_s_last_output_lines_go_to_stderr(home: Path) -> None:
    script = builtin_script("command-succeeds", NOBODY, command="for i in 1 2 3 4 5 6 7; do echo line $i; done; pwd; exit 3")
    failed = run_script(script, home)
    assert failed.returncode == 1 and failed.stdout == "The check command failed (exit status 3).\n"
    assert failed.stderr.splitlines() == ["line 4", "line 5", "line 6", "line 7", str(home)]  # run in the home


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/test installs it)")
def test_the_generated_scripts_pass_shellcheck(tmp_path: Path) -> None:
    scripts = {
        "exists": builtin_script("file-exists", "learner", path="~/a b.txt"),
        "contains": builtin_script("file-contains", "learner", path="/etc/motd", pattern="^Welcome"),
        "command": builtin_script("command-succeeds", "learner", command="systemctl is-active nginx"),
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(["shellcheck", "--shell=sh", *(str(tmp_path / n) for n in scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
