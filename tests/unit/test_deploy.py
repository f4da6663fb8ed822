"""Deploy and build files: docker-compose.yml, config/, the Dockerfile, constraints.txt, the Makefile's habits."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement

from billing.core.config import Settings
from billing.infra.pipelines import SUFFIX, load_pipeline
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARS = sorted(f"BILLING_{name.upper()}" for name in Settings.model_fields)
ENV_EXAMPLE = ROOT / "config" / "billing.env.example"
PIPELINE_FILES = sorted((ROOT / "reports").glob(f"*{SUFFIX}"))
# Read from the process environment by the CLI, not by Settings: fine in compose's environment, which the
# container's process gets, but a settings file would silently ignore them.
PROCESS_ENV_VARS = ["BILLING_LOG_LEVEL"]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    """The example's assignments, those commented out included (they name settings too)."""
    return dict(re.findall(r"^#?\s*(BILLING_[A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the mounts that are files of this repository, not named volumes."""
    pairs = [str(v).split(":")[:2] for v in service.get("volumes", [])]
    return [(host, inside) for host, inside in pairs if host.startswith((".", "/"))]


def redis_conf() -> dict[str, str]:
    lines = (ROOT / "config" / "redis.conf").read_text().splitlines()
    return dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))


def test_redis_runs_on_the_mounted_durable_config_with_a_volume() -> None:
    redis_service = compose()["services"]["redis"]
    command = redis_service["command"]
    mounts = dict((inside, host) for host, inside in bind_mounts(redis_service))
    assert command[0] == "redis-server" and mounts[command[1]] == "./config/redis.conf"
    conf = redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"
    assert any(str(v).split(":")[1] == "/data" for v in redis_service["volumes"])
    assert "redis-cli" in redis_service["healthcheck"]["test"]


def test_redis_server_accepts_the_config_file(tmp_path: Path) -> None:
    port = free_port()
    args = [shutil.which("redis-server") or "redis-server", str(ROOT / "config" / "redis.conf")]
    proc = subprocess.Popen(
        args + ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        for _ in range(200):
            assert proc.poll() is None, "redis-server refused the config file"
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        proc.kill()
        proc.wait()


def test_every_file_compose_mounts_or_reads_exists() -> None:
    services = compose()["services"]
    for service in services.values():
        for host, _ in bind_mounts(service):
            assert (ROOT / host).is_file(), host
    # The app's settings file is the operator's copy of the one example, never committed nor built into the image.
    assert services["app"]["env_file"] == "config/billing.env"
    assert ENV_EXAMPLE.is_file()
    assert not (ROOT / ".env.example").exists()
    assert "config/billing.env" in (ROOT / ".gitignore").read_text().split()
    assert "config/billing.env" in (ROOT / ".dockerignore").read_text().split()


def test_mongo_has_a_volume_and_a_healthcheck() -> None:
    mongo = compose()["services"]["mongo"]
    assert any(str(v).split(":")[1] == "/data/db" for v in mongo["volumes"])
    assert mongo["healthcheck"]["test"]


def test_named_volumes_are_declared() -> None:
    doc = compose()
    used = {str(v).split(":")[0] for s in doc["services"].values() for v in s.get("volumes", [])}
    assert used - {host for s in doc["services"].values() for host, _ in bind_mounts(s)} <= set(doc["volumes"])


def test_app_waits_for_healthy_stores_and_talks_to_them() -> None:
    app = compose()["services"]["app"]
    assert app["build"] == "."
    assert app["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "mongo": {"condition": "service_healthy"},
    }
    env = app["environment"]
    assert env["BILLING_REDIS_URL"].startswith("redis://redis:")
    assert env["BILLING_MONGO_URL"].startswith("mongodb://mongo:")
    assert int(str(app["stop_grace_period"]).rstrip("s")) > 10  # longer than the server's drain


def test_every_variable_the_deploy_files_name_is_a_setting() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    in_compose = set(re.findall(r"\b(BILLING_[A-Z_]+)", text))
    assert in_compose - set(SETTINGS_VARS + PROCESS_ENV_VARS) == set()
    assert set(env_example()) - set(SETTINGS_VARS) == set()
    assert {"BILLING_TOKENS", "BILLING_SECRET"} <= set(env_example())


def test_deploy_files_restate_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default lives once, in billing/core/config.py: compose and the example set only what differs from it."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{BILLING_[A-Z_]+:-", text) == []
    assigned = {**env_example(), **compose()["services"]["app"]["environment"]}
    for var, value in assigned.items():
        name = var.removeprefix("BILLING_").lower()
        if name not in Settings.model_fields:
            continue
        monkeypatch.setenv(var, value)
        parsed = getattr(Settings(_env_file=None), name)
        assert parsed != Settings.model_fields[name].get_default(call_default_factory=True), (var, value)


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())  # join continued lines
    lines = [line.strip() for line in text.splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    cmd = max(i for i, line in enumerate(lines) if line.startswith("CMD "))
    assert cmd > max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert "serve" in lines[cmd]


def test_dockerfile_installs_the_pinned_versions() -> None:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert any("constraints.txt" in files for files in copies)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)


def pins() -> dict[str, str]:
    text = (ROOT / "constraints.txt").read_text()
    return {canon(name): version for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_requirement_within_its_range() -> None:
    requirements = [Requirement(r) for r in importlib.metadata.requires("billing") or []]
    assert any(r.marker and r.marker.evaluate({"extra": "test"}) for r in requirements)
    pinned = pins()
    for req in requirements:
        assert canon(req.name) in pinned, req.name
        assert req.specifier.contains(pinned[canon(req.name)], prereleases=True), (req, pinned[canon(req.name)])


def test_constraints_header_names_the_command_make_lock_runs() -> None:
    header = (ROOT / "constraints.txt").read_text().split("\n\n", 1)[0]
    command = re.search(r"^#\s+(pip-compile .*)$", header, re.M)
    assert command, header
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lock = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert lock and "pip-compile" in lock.group(1)
    for option in command.group(1).split()[1:]:
        flag = option.split("=")[0]
        if flag in ("--output-file", "setup.py"):
            continue
        assert flag in lock.group(1), flag
    assert "--extra=test" in command.group(1) and command.group(1).endswith(" setup.py")


def make_n(directory: Path, *args: str) -> str:
    env = {**os.environ, "MAKEFLAGS": ""}
    return subprocess.run(
        ["make", "-n", *args], cwd=directory, env=env, capture_output=True, text=True, check=True
    ).stdout


def test_the_install_stamp_follows_setup_py_and_the_constraints(tmp_path: Path) -> None:
    for name in ("Makefile", "setup.py", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()

    def stamp() -> str:
        out = make_n(tmp_path, "install")
        assert "-c constraints.txt -e '.[test]'" in out
        return re.findall(r"touch (\S+)", out)[-1]

    first = stamp()
    with (tmp_path / "constraints.txt").open("a") as f:
        f.write("six==1.17.0\n")
    second = stamp()
    with (tmp_path / "setup.py").open("a") as f:
        f.write("# changed\n")
    assert len({first, second, stamp()}) == 3


def test_make_test_starts_no_redis_daemon() -> None:
    out = make_n(ROOT, "test")
    assert "bash scripts/ensure-redis.sh\n" in out
    assert "--serve" not in out and "daemonize" not in out


def fake_program(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_ensure_redis_without_serve_only_checks_the_binary(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    for name in ("redis-server", "redis-cli"):
        fake_program(tmp_path, name, f'echo "{name} $*" >> {log}; exit 1')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-redis.sh")], env=env, capture_output=True)
    assert done.returncode == 0 and not log.exists()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("echo 3.9", "is Python 3.9; the service needs >= 3.11"),
        ("exit 127", "does not run"),
        ('case "$*" in *ensurepip*) exit 1;; esac; echo 3.11', "apt-get install python3-venv"),
    ],
    ids=["too old", "broken", "no venv module"],
)
def test_check_python_stops_with_one_line(tmp_path: Path, body: str, says: str) -> None:
    fake_program(tmp_path, "python3", body)
    script = ROOT / "scripts" / "check-python.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "python3")], capture_output=True, text=True)
    assert done.returncode == 1
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_check_python_accepts_this_interpreter() -> None:
    script = ROOT / "scripts" / "check-python.sh"
    assert subprocess.run(["bash", str(script), sys.executable], capture_output=True).returncode == 0


def test_operations_doc_configuration_table_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    block = doc.split("<!-- section: operations -->", 1)[1].split("<!-- /section: operations -->", 1)[0]
    missing = [var for var in SETTINGS_VARS + ["BILLING_CONFIG_FILE", "BILLING_LOG_LEVEL"] if f"`{var}`" not in block]
    assert missing == []


def test_the_report_cache_defaults_to_the_users_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BILLING_REPORTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Settings(_env_file=None).reports_dir == tmp_path / ".cache" / "billing" / "reports"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG spec says
    assert Settings(_env_file=None).reports_dir == tmp_path / ".cache" / "billing" / "reports"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings(_env_file=None).reports_dir == tmp_path / "xdg" / "billing" / "reports"
    monkeypatch.setenv("BILLING_REPORTS_DIR", str(tmp_path / "mine"))
    assert Settings(_env_file=None).reports_dir == tmp_path / "mine"


def data_packages() -> dict[str, str]:
    """setup.py's package_dir: the top-level folders that install as data packages (billing.lua <- lua)."""
    block = re.search(r"package_dir=\{(.*?)\}", (ROOT / "setup.py").read_text(), re.S)
    assert block
    return dict(re.findall(r'"([\w.]+)":\s*"([\w./-]+)"', block.group(1)))


def test_the_image_gets_every_data_package() -> None:
    folders = set(data_packages().values())
    assert {"lua", "reports"} <= folders
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert folders <= copied and not folders & ignored


def test_an_installed_wheel_finds_its_lua_scripts_and_pipelines(tmp_path: Path) -> None:
    """Built from what the image copies, installed as a plain (non-editable) package, away from the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for name in line.split()[1:-1]:
                copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
                copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("billing-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    probe = (
        "import billing, json\n"
        "from billing.ledger.scripts import LUA_DIR, SCRIPT_NAMES\n"
        "from billing.infra.pipelines import PIPELINES_DIR, load_pipeline\n"
        "names = sorted(p.stem for p in PIPELINES_DIR.glob('*.jsonc'))\n"
        "print(json.dumps({'package': billing.__file__, 'lua': str(LUA_DIR), 'reports': str(PIPELINES_DIR),\n"
        "    'scripts': all((LUA_DIR / f'{n}.lua').is_file() for n in SCRIPT_NAMES + ('_prelude', '_batch')),\n"
        "    'pipelines': {n: sorted(load_pipeline(n).params) for n in names}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["package"]).is_relative_to(site)
    assert found["lua"] == str(site / "billing" / "lua") and found["scripts"]
    assert found["reports"] == str(site / "billing" / "reports")
    assert found["pipelines"] == {path.stem: sorted(load_pipeline(path.stem).params) for path in PIPELINE_FILES}
