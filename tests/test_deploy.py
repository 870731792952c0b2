"""deploy/ stays consistent with the code: the YAML parses, every ``EDITQ_*`` variable
is a Settings field, every command exists, probes hit real routes, and the worker's
stop grace outlasts a job attempt. (No Docker engine here: these checks are static.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from app.cli.main import build_parser
from app.core.providers_config import load_providers
from app.http.app import create_app
from app.settings import Settings
from worker.process.main import build_parser as worker_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILE = DEPLOY / "Dockerfile"
TEXT_FILES = [COMPOSE, *K8S, DOCKERFILE, DEPLOY / "example.env", DEPLOY / "README.md"]
VARIABLE = re.compile(r"\bEDITQ_[A-Z0-9_]+\b")
# A stopping worker drains this long: no grace period may cut it short.
LONGEST_STOP_S = max(
    Settings.model_fields["attempt_budget_s"].default,
    Settings.model_fields["worker_drain_s"].default,
)


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    parsed: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return parsed


def k8s_documents() -> list[dict[str, Any]]:
    """Every document of every deploy/k8s/*.yaml."""
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_kind(kind: str, name: str) -> dict[str, Any]:
    """The one Kubernetes object of ``kind`` called ``name``."""
    [found] = [
        doc for doc in k8s_documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return found


def containers() -> Iterator[dict[str, Any]]:
    """Every container of every Deployment."""
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            yield from doc["spec"]["template"]["spec"]["containers"]


def settings_variables() -> set[str]:
    """Every variable Settings reads: ``EDITQ_`` + field name, and declared aliases."""
    names = {f"EDITQ_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        choices = getattr(field.validation_alias, "choices", ())
        names.update(choice for choice in choices if isinstance(choice, str))
    return names


def commands() -> Iterator[list[str]]:
    """Every editq command line deploy/ runs (the image's ENTRYPOINT is ``editq``)."""
    entrypoint = ["editq"]
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("CMD"):
            yield entrypoint + yaml.safe_load(line.split(maxsplit=1)[1])
    for service in compose()["services"].values():
        if "build" in service:  # the editq image (x-editq, merged in)
            yield entrypoint + service["command"]
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["editq"]:
            yield test[1:]
    for container in containers():
        yield entrypoint + container["args"]
        probe = container.get("livenessProbe", {}).get("exec", {}).get("command")
        if probe:
            yield probe


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` parses with editq's own parsers."""
    if argv[:3] == ["python", "-m", "worker"]:
        worker_parser().parse_args(argv[3:])
        return
    assert argv[0] == "editq", argv
    args, rest = build_parser().parse_known_args(argv[1:])
    if args.command == "worker":
        worker_parser().parse_args(rest)
    else:
        assert args.command in {"api", "dev"} and not rest, argv


def seconds(duration: str | int) -> float:
    """A compose duration ("6m", "390s", "1m30s") or a number of seconds."""
    if isinstance(duration, int):
        return duration
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.mark.parametrize("path", [COMPOSE, *K8S], ids=lambda path: path.name)
def test_the_yaml_parses(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda path: path.name)
def test_every_editq_variable_is_a_setting(path: Path) -> None:
    unknown = set(VARIABLE.findall(path.read_text())) - settings_variables()
    assert not unknown, f"{path.name} names variables Settings does not read: {unknown}"


def test_the_k8s_config_sets_only_settings_and_upstream_keys() -> None:
    config = k8s_kind("ConfigMap", "editq-config")["data"]
    secret = k8s_kind("Secret", "editq-secrets")["stringData"]
    for name in [*config, *secret]:
        assert name in settings_variables() or name in {"providers.toml", "OPENAI_API_KEY"}


def test_every_command_exists() -> None:
    found = list(commands())
    assert ["editq", "worker", "--check"] in found
    assert ["editq", "api", "--host", "0.0.0.0"] in found
    for argv in found:
        check_command(argv)


def test_a_wrong_command_would_be_caught() -> None:
    with pytest.raises(SystemExit):
        check_command(["editq", "worker", "--chekc"])
    with pytest.raises(AssertionError):
        check_command(["editq", "api", "--workers", "2"])


def test_probes_hit_real_routes() -> None:
    providers = load_providers(None, {})
    app = create_app(Settings(api_keys=("key",)), providers)
    routes = {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and isinstance(route.resource, web.Resource)
    }
    api = compose()["services"]["api"]
    probe = " ".join(api["healthcheck"]["test"])
    assert "/readyz" in probe
    [container] = [c for c in containers() if c["name"] == "api"]
    paths = {container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}
    assert paths == {"/readyz", "/healthz"}
    assert paths | {"/metrics"} <= routes


def test_a_stopping_worker_may_drain_an_attempt() -> None:
    worker = compose()["services"]["worker"]
    assert seconds(worker["stop_grace_period"]) > LONGEST_STOP_S
    spec = k8s_kind("Deployment", "editq-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > LONGEST_STOP_S
    [container] = spec["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["editq", "worker", "--check"]


def test_compose_redis_persists_and_never_evicts() -> None:
    command = compose()["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"


def test_compose_runs_two_api_replicas_and_scalable_workers() -> None:
    services = compose()["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    assert worker["healthcheck"]["test"] == ["CMD", "editq", "worker", "--check"]


def test_compose_mounts_a_providers_file_that_loads() -> None:
    providers = load_providers(DEPLOY / "providers.toml", {})
    assert providers.edit_model("local/editor").upstream == "local"
    environment = compose()["x-editq"]["environment"]
    assert environment["EDITQ_PROVIDERS_FILE"] == "/etc/editq/providers.toml"


def test_the_k8s_providers_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(k8s_kind("ConfigMap", "editq-config")["data"]["providers.toml"])
    providers = load_providers(path, {"OPENAI_API_KEY": "sk-test"})
    assert providers.edit_model("openai/gpt-image-1").upstream == "openai"


def test_the_image_is_slim_non_root_and_installs_no_extras() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    [user] = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in {"root", "0"}
    assert re.findall(r"pip install (\S+)", text) == ["."]  # no [embedded] or [test] extras
    assert 'ENTRYPOINT ["editq"]' in text
