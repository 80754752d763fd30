"""The deployment artefacts (deploy/, docs/deploy.md) say what an operator relies on, and it is true.

Every long-running service has a health check or probe; every command they run is a real `labdesk`
sub-command (asked of the real `labdesk` console script) or the real gunicorn target; every LABDESK_*
variable they name is a setting, and the shipped labdesk.toml files load; no secret value is committed;
the systemd units pass `systemd-analyze verify`; a worker may finish its longest job before it is killed.
Then the web runs as compose and systemd run it (gunicorn, that command line) against PostgreSQL and
Redis and answers /healthz, and the worker and scheduler probes pass while those processes run and fail
once they stop. Nothing is pulled and no network is used beyond loopback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from redis import Redis

from broker.config import ENV_PREFIX, Settings, load_settings
from broker.dispatch import JOB_TIMEOUT
from tests.support.guacd_double import GuacdDouble
from tests.support.http import free_port
from tests.support.processes import stop_process
from tests.support.services import REDIS_URL, create_pg_database, drop_pg_database
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
BIN = Path(sys.executable).parent
PLACEHOLDER = "change-me"
SECRET_NAMES = ("POSTGRES_PASSWORD", "LABDESK_DATABASE_URL", "LABDESK_SECRET_KEY", "LABDESK_ENCRYPTION_KEYS",
                "LABDESK_ADMIN_OIDC_CLIENT_SECRET")
ONE_SHOT = {"migrate"}


# -- reading the artefacts --------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def unit(name: str) -> dict[str, str]:
    """The unit's `Key=value` lines (last one wins, as for systemd's single-valued keys)."""
    found: dict[str, str] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found[key] = value
    return found


def unit_names() -> list[str]:
    return sorted(p.name for p in SYSTEMD.glob("*.service"))


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def commands() -> list[tuple[str, list[str]]]:
    """Every command line the artefacts run: (where, argv)."""
    found = [(f"compose {name}", service["command"]) for name, service in compose()["services"].items()
             if isinstance(service.get("command"), list) and service.get("image", "").startswith("${IMAGE")]
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            found += [(f"kubernetes {doc['metadata']['name']}", c["command"]) for c in containers(doc)]
    for name in unit_names():
        argv = shlex.split(unit(name)["ExecStart"])
        argv[0] = Path(argv[0]).name  # /opt/labdesk/.venv/bin/labdesk -> labdesk
        found.append((f"systemd {name}", [a.replace("%i", "labdesk-default") for a in argv]))
    return found


def artefact_texts() -> dict[str, str]:
    paths = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / "docs" / "deploy.md"]
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


# -- the processes' environment ---------------------------------------------------------------------------
@pytest.fixture
def deploy_env(pg_url: str, redis_client: Redis, tmp_path: Path) -> dict[str, str]:
    """What compose gives a LabDesk container: the shipped labdesk.toml, the secrets as LABDESK_* variables
    and the database and Redis URLs; here they point at the test PostgreSQL and Redis. data_dir points at a
    scratch folder that is read-only, as the container's is: nothing may be written there."""
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(
        LABDESK_CONFIG=str(DEPLOY / "labdesk.toml"),
        LABDESK_DATABASE_URL=pg_url,
        LABDESK_REDIS_URL=REDIS_URL,
        LABDESK_SECRET_KEY="deploy-test-secret",
        LABDESK_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        LABDESK_DATA_DIR=str(data_dir),
        WEB_CONCURRENCY="2",
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The health check as compose and Kubernetes run it (from the image's working directory)."""
    return subprocess.run([sys.executable, "deploy/healthcheck.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


# -- health checks and probes -----------------------------------------------------------------------------
def test_every_long_running_compose_service_has_a_health_check_and_waits_for_the_migration() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "guacd", "migrate", "web", "tunnel", "worker", "scheduler"} <= set(services)
    assert services["guacd"]["image"].startswith("guacamole/guacd:")
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no" and service["command"] == ["labdesk", "db", "upgrade"]
            continue
        assert service.get("healthcheck", {}).get("test"), f"compose service {name} has no health check"
        if service.get("image", "").startswith("${IMAGE"):
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert any(s.get("deploy", {}).get("replicas", 1) > 1 for s in services.values() if "worker" in s.get("command", []))
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_every_kubernetes_workload_has_probes_and_web_tunnel_and_workers_scale_horizontally() -> None:
    workloads = k8s_kind("Deployment") + k8s_kind("StatefulSet")
    assert workloads
    for doc in workloads:
        for container in containers(doc):
            missing = {"readinessProbe", "livenessProbe"} - set(container)
            assert not missing, f"{doc['metadata']['name']}: no {', '.join(sorted(missing))}"
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in k8s_kind("HorizontalPodAutoscaler")}
    assert {"labdesk-web", "labdesk-tunnel", "labdesk-worker"} <= scaled
    assert {d["metadata"]["name"] for d in k8s_kind("Deployment")} >= scaled
    [job] = k8s_kind("Job")
    assert containers(job)[0]["command"] == ["labdesk", "db", "upgrade"]
    assert {s["metadata"]["name"] for s in k8s_kind("Service")} >= {"labdesk-web", "labdesk-tunnel", "guacd"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).exists() for r in kustomization["resources"])
    [scheduler] = [d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "labdesk-scheduler"]
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"


def test_a_worker_may_finish_its_longest_job_before_it_is_killed() -> None:
    """SIGTERM is rq's warm shutdown; every artefact must wait longer than JOB_TIMEOUT before SIGKILL."""
    for name, service in compose()["services"].items():
        if service.get("command", [])[:2] == ["labdesk", "worker"]:
            minutes = re.fullmatch(r"(\d+)m", service["stop_grace_period"])
            assert minutes and int(minutes[1]) * 60 > JOB_TIMEOUT, name
    for doc in k8s_kind("Deployment"):
        if containers(doc)[0]["command"][:2] == ["labdesk", "worker"]:
            assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > JOB_TIMEOUT
    worker = unit("labdesk-worker@.service")
    assert int(worker["TimeoutStopSec"]) > JOB_TIMEOUT
    assert worker["KillSignal"] == "SIGTERM" and worker["KillMode"] == "mixed"  # the work-horse is spared


def test_web_and_tunnel_pods_leave_the_service_before_sigterm_and_roll_without_a_gap() -> None:
    """docs/deploy.md, "Graceful operations": a rolling update starts a ready pod before it stops one; the
    stopping pod sleeps in preStop while the Service and ingress stop routing to it, then gets SIGTERM and
    drains (gunicorn: --graceful-timeout) well inside terminationGracePeriodSeconds. On a VM, `systemctl
    reload labdesk-web` is gunicorn's graceful worker reload (SIGHUP)."""
    for name in ("labdesk-web", "labdesk-tunnel"):
        [doc] = [d for d in k8s_kind("Deployment") if d["metadata"]["name"] == name]
        [container] = containers(doc)
        assert doc["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz", name
        sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep == "sleep" and int(seconds) >= 5, name
        argv = container["command"]
        drain = int(argv[argv.index("--graceful-timeout") + 1]) if "--graceful-timeout" in argv else 0
        assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(seconds) + drain, name
    web = unit("labdesk-web.service")
    assert web["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(web["TimeoutStopSec"]) > 30 and "--graceful-timeout 30" in web["ExecStart"]


# -- commands ---------------------------------------------------------------------------------------------
def test_every_command_the_artefacts_run_exists(deploy_env: dict[str, str]) -> None:
    """`labdesk <sub-command> --help` answers, and knows every option used; gunicorn checks its
    configuration and loads the app target (`--check-config`)."""
    runs: dict[tuple[str, ...], list[str]] = {}
    for where, argv in commands():
        if argv[0] == "labdesk":
            sub = tuple(a for a in argv[1:] if not a.startswith("-") and a not in _option_values(argv))
            runs.setdefault(("labdesk", *sub, "--help"), []).extend(a for a in argv if a.startswith("--"))
        else:
            assert argv[0] == "gunicorn", f"{where}: {argv[0]} is neither labdesk nor gunicorn"
            bound = [a if not re.fullmatch(r"[\d.]+:\d+", a) else f"127.0.0.1:{free_port()}" for a in argv[1:]]
            runs.setdefault(("gunicorn", "--check-config", *bound), [])
    assert len(runs) >= 5  # db upgrade, worker, tunnel, scheduler, gunicorn
    started = {argv: subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=deploy_env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for argv in runs}
    for argv, process in started.items():
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
        for option in runs[argv]:
            assert option in output, f"{' '.join(argv)} does not know {option}"


def _option_values(argv: list[str]) -> set[str]:
    return {argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}


# -- settings ---------------------------------------------------------------------------------------------
def test_every_labdesk_variable_the_artefacts_name_is_a_setting() -> None:
    known = {f.name for f in fields(Settings)}
    named = {m for text in artefact_texts().values() for m in re.findall(r"\bLABDESK_[A-Z0-9_]+\b", text)}
    assert named  # the artefacts do configure LabDesk through the environment
    unknown = {n for n in named - {f"{ENV_PREFIX}CONFIG"} if n[len(ENV_PREFIX):].lower() not in known}
    assert not unknown, f"not settings (broker/config.py): {sorted(unknown)}"


def test_the_shipped_labdesk_toml_files_load_as_settings() -> None:
    """The compose/VM file and the Kubernetes ConfigMap's copy are valid settings, production-safe."""
    [config_map] = k8s_kind("ConfigMap")
    texts = {"deploy/labdesk.toml": (DEPLOY / "labdesk.toml").read_text(),
             "ConfigMap labdesk.toml": config_map["data"]["labdesk.toml"]}
    for where, text in texts.items():
        data = tomllib.loads(text)
        assert not {"database_url", "secret_key", "encryption_keys", "admin_oidc_client_secret"} & set(data), where
        settings = load_settings(environ={}, overrides=data)
        assert not settings.dev_login and not settings.emulator and settings.proxy_hops >= 1, where
        assert settings.public_url.startswith("https://") and settings.tunnel_url.startswith("wss://"), where


# -- secrets ----------------------------------------------------------------------------------------------
def test_no_secret_value_is_committed() -> None:
    examples = {
        "deploy/.env.example": _env_file(DEPLOY / ".env.example"),
        "deploy/systemd/secrets.env.example": _env_file(SYSTEMD / "secrets.env.example"),
    }
    [secret] = k8s_kind("Secret")
    examples["deploy/kubernetes/secret.template.yaml"] = secret["stringData"]
    for where, values in examples.items():
        secrets = {k: v for k, v in values.items() if k in SECRET_NAMES}
        assert secrets, where
        for key, value in secrets.items():
            assert PLACEHOLDER in value and value.count(":") <= 3, f"{where}: {key} is not a placeholder"
            assert value == PLACEHOLDER or key == "LABDESK_DATABASE_URL", f"{where}: {key}"
    services = compose()["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if key in SECRET_NAMES or key == "LABDESK_DATABASE_URL":
                assert "${" in str(value), f"compose {name}: {key} is written in, not taken from .env"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(SECRET|PASSWORD|ENCRYPTION)", dockerfile)
    ignored = subprocess.run(["git", "check-ignore", "deploy/.env", "deploy/secrets/x"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["deploy/.env", "deploy/secrets/x"]
    dockerignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"**/.env", "var", "labdesk.toml", ".venv"} <= set(dockerignore)


def test_the_image_build_context_keeps_the_code_and_leaves_out_local_state_and_secrets() -> None:
    """deploy/Dockerfile.dockerignore, read as Docker reads it (a path is out when it or a parent matches),
    over the files git has and the local files a developer's checkout holds."""
    patterns = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["app.py", "pyproject.toml", "package.json", "package-lock.json", "migrations/env.py",
              "deploy/healthcheck.py", "broker/config.py", "web/templates/lab.html", "lti/web.py", "tunnel/server.py"]
    assert all((ROOT / path).exists() for path in needed)
    kept_out = [".env", "deploy/.env", "var/secret.key", "var/encryption.key", "labdesk.toml", ".venv/bin/python",
                "node_modules/guacamole-common-js/package.json", "deploy/secrets/db", "broker/__pycache__/x.pyc", "keys/tool.pem"]
    assert [p for p in needed if _docker_ignores(patterns, p)] == []
    assert [p for p in kept_out if not _docker_ignores(patterns, p)] == []


def _docker_ignores(patterns: list[str], path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_docker_pattern(p).fullmatch(prefix) for p in patterns for prefix in prefixes)


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's ignore syntax: `*` and `?` stay within one path element, `**/` spans any number of them."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(regex)


def _env_file(path: Path) -> dict[str, str]:
    lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if re.fullmatch(r"[A-Z_]+=\S*", line))


# -- systemd and docker compose, with their own tools -----------------------------------------------------
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Installed under /opt/labdesk; verified here against this checkout (the executables must exist)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    for path in SYSTEMD.glob("labdesk*"):
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/labdesk", str(ROOT)))
    (tmp_path / "labdesk-worker@labdesk-default.service").write_text((tmp_path / "labdesk-worker@.service").read_text())
    names = [n for n in unit_names() if not n.endswith("@.service")] + ["labdesk-worker@labdesk-default.service"]
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *names, "labdesk.target"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    for name in unit_names():
        options = unit(name)
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                           "User": "labdesk", "ReadWritePaths": "/var/lib/labdesk"}.items():
            assert options.get(key) == value, f"{name}: {key}"
        assert options["EnvironmentFile"] == "/etc/labdesk/secrets.env", name
        if options.get("Type") != "oneshot":
            assert options["Restart"] == "on-failure" and options["KillSignal"] == "SIGTERM", name
            assert "labdesk-migrate.service" in options["Requires"] and "labdesk-migrate.service" in options["After"]


def test_docker_compose_accepts_the_compose_file() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed here")
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        pytest.skip(f"docker has no compose plugin here: {(version.stderr or version.stdout).strip()}")
    result = subprocess.run(["docker", "compose", "--env-file", ".env.example", "config", "--quiet"],
                            cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the processes, for real ------------------------------------------------------------------------------
def test_the_migration_as_deployed_brings_an_empty_database_to_head_and_may_run_again(
        deploy_env: dict[str, str], tmp_path: Path) -> None:
    """compose's one-shot `migrate` (the Kubernetes Job and labdesk-migrate.service run the same) on a fresh
    PostgreSQL database; running it again at the next upgrade is harmless."""
    argv = compose()["services"]["migrate"]["command"]
    url = create_pg_database()
    try:
        env = {**deploy_env, "LABDESK_DATABASE_URL": url}
        for _ in range(2):
            done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0 and "database is up to date" in done.stdout, done.stderr
        check = subprocess.run([str(BIN / "labdesk"), "db", "check"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
        assert check.returncode == 0, check.stderr
    finally:
        drop_pg_database(url)


@pytest.fixture
def web(deploy_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """gunicorn with compose's command line (only the bind address moved to a free loopback port)."""
    argv = compose()["services"]["web"]["command"]
    port = free_port()
    argv = [f"127.0.0.1:{port}" if a == "0.0.0.0:8000" else a for a in argv]
    assert f"127.0.0.1:{port}" in argv
    process = start([str(BIN / argv[0]), *argv[1:]], deploy_env, tmp_path / "gunicorn.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: process.poll() is not None or _answers(url), timeout=60, what="gunicorn to answer")
        assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
        yield url
    finally:
        stop_process(process)


def _answers(url: str) -> bool:
    try:
        requests.get(url + "/healthz", timeout=5)
        return True
    except requests.RequestException:  # refused, or accepted while the workers still boot
        return False


def test_gunicorn_as_deployed_serves_healthz_on_postgresql_and_redis(web: str, deploy_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    answer = requests.get(web + "/healthz", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["database"] == "ok" and answer.json()["redis"] == "ok"
    assert probe(deploy_env, "http", web + "/healthz").returncode == 0  # the compose health check
    gunicorn_pids = subprocess.run(["pgrep", "-f", f"gunicorn --bind {web.removeprefix('http://')}"],
                                   capture_output=True, text=True).stdout.split()
    assert len(gunicorn_pids) == 1 + 2  # the master and WEB_CONCURRENCY=2 workers
    assert list((tmp_path / "state").iterdir()) == []  # with the secrets set, nothing is written to data_dir
    closed = probe(deploy_env, "http", f"http://127.0.0.1:{free_port()}/healthz")
    assert closed.returncode == 1 and closed.stderr.startswith("unhealthy: ")


def test_tunnel_as_deployed_is_healthy_while_its_guacd_answers(deploy_env: dict[str, str], tmp_path: Path) -> None:
    """compose's tunnel command line and health check, with a guacd that speaks the real protocol: healthy
    while it answers, unhealthy (503) once it is gone, so the proxy or Service stops sending learners there."""
    port = free_port()
    argv = [f"127.0.0.1:{port}" if a == "0.0.0.0:8001" else a for a in compose()["services"]["tunnel"]["command"]]
    assert f"127.0.0.1:{port}" in argv
    guacd = GuacdDouble().start()
    env = {**deploy_env, "LABDESK_GUACD_HOSTS": "{}:{}".format(*guacd.address), "LABDESK_GUACD_CHECK_INTERVAL": "1"}
    process = start([str(BIN / argv[0]), *argv[1:]], env, tmp_path / "tunnel.log")
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_until(lambda: process.poll() is not None or probe(env, "http", url).returncode == 0,
                   timeout=60, interval=0.5, what="the tunnel's health check to pass")
        assert process.poll() is None, (tmp_path / "tunnel.log").read_text()
        guacd.stop()
        down = wait_until(lambda: (r := probe(env, "http", url)).returncode == 1 and r, timeout=30, interval=0.5,
                          what="the tunnel to report its guacd down")
        assert "answered 503" in down.stderr
    finally:
        stop_process(process)
        guacd.stop()


def test_worker_and_scheduler_probes_follow_their_processes(deploy_env: dict[str, str], tmp_path: Path) -> None:
    """The probes pass while `labdesk worker` and `labdesk scheduler` run (as compose starts them), and fail
    once they have stopped: what lets Kubernetes and compose restart a dead or wedged one."""
    assert probe(deploy_env, "worker").returncode == 1
    assert probe(deploy_env, "scheduler").returncode == 1
    services = compose()["services"]
    processes = {name: start([str(BIN / "labdesk"), *services[name]["command"][1:]], deploy_env, tmp_path / f"{name}.log")
                 for name in ("worker", "scheduler")}
    try:
        for name, process in processes.items():
            wait_until(lambda: process.poll() is not None or probe(deploy_env, name).returncode == 0,
                       timeout=60, interval=0.5, what=f"the {name} probe to pass")
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
            stop_process(process, grace=30)
    for name in processes:
        failed = probe(deploy_env, name)
        assert failed.returncode == 1 and "is registered in Redis" in failed.stderr, failed.stderr


def test_docs_name_every_artefact() -> None:
    """docs/deploy.md is where an operator starts: it names each file under deploy/."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".gitignore"):
        assert path.name in doc, f"docs/deploy.md never mentions {path.relative_to(ROOT)}"
