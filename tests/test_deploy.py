"""The deployment files agree with the code: every command a compose service
runs exists and accepts its flags, every FEDXAI_* variable is one the code
reads; and the files pass docker-compose's and hadolint's own checks."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from services.cli.main import build_parser
from services.trainer.warm_node import runtime_address
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.tls.yml"]
SETTINGS_SOURCE = (REPO_ROOT / "fedxai" / "settings.py").read_text()


def dotenv() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} and ${VAR:-default}."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", text)


def services(path: Path) -> dict[str, dict]:
    return yaml.safe_load(interpolate(path.read_text(), dotenv()))["services"]


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in COMPOSE_FILES:
        for name, service in services(path).items():
            command = service.get("command")
            if command is None or name == "minio":
                continue
            found.append((f"{path.name}:{name}", command if isinstance(command, list) else shlex.split(command)))
    return found


@pytest.mark.parametrize(("where", "argv"), commands(), ids=[where for where, _ in commands()])
def test_every_command_exists_and_takes_its_flags(where, argv):
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert argv[0] in scripts, f"{where}: {argv[0]} is not an installed console script"
    if argv[:2] == ["fedxai", "trainer"]:  # a SuperNode's flags, checked as the SuperNode's below
        supernode_args = build_parser().parse_args(argv[1:]).supernode_args
        runtime_address(supernode_args)  # raises on what `fedxai trainer` refuses
        argv = ["flower-supernode", *supernode_args]
    if argv[0] == "fedxai":
        build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown flag
    else:
        help_text = subprocess.run(
            [str(Path(sys.executable).with_name(argv[0])), "--help"], capture_output=True, text=True, check=True
        ).stdout
        for flag in (arg for arg in argv[1:] if arg.startswith("--")):
            assert flag in help_text, f"{where}: {argv[0]} has no {flag}"


def test_every_fedxai_variable_is_read_by_the_settings():
    known = set(re.findall(r'"(FEDXAI_[A-Z0-9_]+)"', SETTINGS_SOURCE))
    used = set()
    for path in COMPOSE_FILES:
        for service in services(path).values():
            environment = service.get("environment") or {}
            used |= {key for key in environment if key.startswith("FEDXAI_")}
    assert used, "the compose file configures the services through FEDXAI_* variables"
    assert used <= known, f"not read by fedxai/settings.py: {sorted(used - known)}"


def test_every_service_has_cpu_and_memory_limits_set_in_dotenv():
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    resolved = services(DEPLOY / "docker-compose.yml")
    settings = dotenv()
    for name, service in raw.items():
        for key in ("cpus", "mem_limit"):
            variable = re.fullmatch(r"\$\{(\w+):-[^}]+\}", str(service.get(key, "")))
            assert variable and variable.group(1) in settings, f"{name}: {key} is not a deploy/.env setting"
        assert float(resolved[name]["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", resolved[name]["mem_limit"]), name


def test_healthchecks_use_the_grpc_health_service():
    test = services(DEPLOY / "docker-compose.yml")["explainer"]["healthcheck"]["test"]
    assert test[1:4] == ["fedxai", "health", "--address"]
    build_parser().parse_args(test[2:])


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is installed by .ci/run")
@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES])
def test_compose_files_are_valid(files, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("certs"))
    (deploy / "certs").mkdir()  # the TLS overlay's secrets point there
    for name in ("ca.crt", "server.crt", "server.key"):
        (deploy / "certs" / name).touch()
    args = ["docker-compose", *(a for f in files for a in ("-f", str(deploy / f.name))), "config", "-q"]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
