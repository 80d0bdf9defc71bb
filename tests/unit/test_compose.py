"""docker/: no Docker engine runs here, so the deployment files are checked for structure: the
services, images, health checks, replication settings, and that every setting they pass exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from app.cli.main import cli
from app.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ["scorer-1", "scorer-2", "explainer", "relay-1", "relay-2"]
KAFKA = ["kafka-1", "kafka-2", "kafka-3"]


def known_settings() -> set[str]:
    """FRAUDLENS_* names the app reads: Settings fields, CLI option envvars, the schema dir."""
    names = {f"FRAUDLENS_{name.upper()}" for name in Settings.model_fields}
    names.add("FRAUDLENS_SCHEMA_DIR")  # app/records/contracts.py, read before settings exist

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            names.update(e for e in envvars if e)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return names


def test_three_kraft_brokers_replicate_everything_three_times() -> None:
    voters = set()
    for name in KAFKA:
        service = SERVICES[name]
        env = service["environment"]
        assert service["image"].startswith("apache/kafka:")
        assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3" and env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # the app creates its topics itself
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert "healthcheck" in service and service["volumes"]
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({SERVICES[n]["environment"]["KAFKA_NODE_ID"] for n in KAFKA}) == 3


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_non_root_with_health_checks_and_rf3(name: str) -> None:
    service = SERVICES[name]
    env = service["environment"]
    assert service["image"] == "fraudlens:latest" and service["build"]["dockerfile"] == "docker/Dockerfile"
    assert not str(service["user"]).startswith("0") and "healthcheck" in service
    assert env["FRAUDLENS_REPLICATION_FACTOR"] == "3"
    assert env["FRAUDLENS_BROKER"] == "kafka://kafka-1:9092;kafka-2:9092;kafka-3:9092"
    assert "FRAUDLENS_TOKEN_SECRET" in env and "${FRAUDLENS_TOKEN_SECRET:?" in env["FRAUDLENS_TOKEN_SECRET"]
    assert set(service["depends_on"]) == set(KAFKA)


def test_roles_and_counts() -> None:
    commands = {name: SERVICES[name]["command"] for name in APP_SERVICES}
    assert [n for n, c in commands.items() if c == ["worker", "--role", "scorer"]] == ["scorer-1", "scorer-2"]
    assert commands["explainer"] == ["worker", "--role", "explainer"]
    assert SERVICES["explainer"]["deploy"]["replicas"] >= 1
    assert [n for n, c in commands.items() if c == ["relay"]] == ["relay-1", "relay-2"]
    for command in commands.values():  # every command line is one the CLI accepts
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_every_setting_passed_exists_in_the_app() -> None:
    known = known_settings()
    passed = set()
    for service in SERVICES.values():
        env = service.get("environment") or {}
        passed |= {key for key in env if key.startswith("FRAUDLENS_")}
    passed |= set(re.findall(r"(FRAUDLENS_[A-Z0-9_]+)=", (DOCKER / "Dockerfile").read_text()))
    assert passed and passed <= known, passed - known


def test_prometheus_scrapes_every_role_with_the_token() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["authorization"]["credentials_file"] == "/tokens/prometheus"
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert set(APP_SERVICES) <= names
    assert "tokens:/tokens:ro" in SERVICES["prometheus"]["volumes"]


def test_dockerfile_is_small_and_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") == 2  # build stage + runtime stage
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("0", "root"))
    assert 'ENTRYPOINT ["fraudlens"]' in text and "FRAUDLENS_MODELS_DIR=/models" in text


def test_the_production_image_does_not_install_the_development_broker() -> None:
    """devbroker/ (fraudlens-devbroker, with its noida-db) is for development and tests: the image
    copies and installs only the root project, and nothing the root project pulls in is it."""
    text = (DOCKER / "Dockerfile").read_text()
    assert "devbroker" not in text and "noida" not in text
    installs = re.findall(r"pip install (.*)$", text, flags=re.M)
    assert installs and all(line.split()[-1] == "." for line in installs), installs
    project = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    requirements = project["project"]["dependencies"]  # what `pip install .` pulls in
    assert not [r for r in requirements if re.match(r"(fraudlens-devbroker|noida-db)\b", r)], requirements
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["app*"]


def test_explainers_yield_the_cpu_to_the_other_containers() -> None:
    """nice works only within a CPU group; a container is one, so the weight must say it."""
    weights = {name: SERVICES[name].get("cpu_shares", 1024) for name in APP_SERVICES}
    assert weights["explainer"] < min(w for name, w in weights.items() if name != "explainer") / 4
