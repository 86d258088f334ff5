"""The deployment files, validated without a Docker engine or a cluster.

- Kubernetes: `kubectl kustomize deploy/` renders the manifests, which must
  pass the Kubernetes JSON schemas in strict mode (kubernetes-validate;
  KEDA's custom resources have no schema there and are checked by hand here).
- Compose: docker-compose.yml must pass the Compose Specification's JSON
  schema (check-jsonschema's vendored copy).
- Dockerfile: hadolint, plus the properties the issue asks for.
Beyond the schemas, each file is checked against what the worker needs:
drain time, probes, privileges, topology, settings names.

Each validator is shown to fail on a broken file, so a pass means something.
`scripts/validate-deploy` runs this module.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness import free_port
from worker import topology
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent supported release
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}  # KEDA's: no schema bundled


def _tool(name: str) -> str:
    """A validator from the virtual environment (dev extras) or the PATH."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/install dev)", pytrace=False)
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)


# --- Kubernetes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (for `kubectl kustomize`) is not installed", pytrace=False)
    result = _run(kubectl, "kustomize", str(DEPLOY))
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def _one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = (m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"]))
    return found


def _config(manifests: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _one(manifests, "ConfigMap", "chatstore-config")["data"]
    return data


def _secret_names(node: Any) -> Iterator[str]:
    """Every Secret a manifest refers to: env, envFrom, volumes, KEDA."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                yield value["name"]
            elif key == "secret" and isinstance(value, dict):
                yield value["secretName"]
            elif key == "secretTargetRef":  # KEDA's TriggerAuthentication
                yield from (target["name"] for target in value)
            else:
                yield from _secret_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_names(item)


def _validate(documents: list[dict[str, Any]], version: str, tmp_path: Path) -> str:
    path = tmp_path / f"rendered-{version}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = _run(_tool("kubernetes-validate"), "--strict", "-k", version, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_manifests_pass_the_kubernetes_schemas_strictly(
    manifests: list[dict[str, Any]], version: str, tmp_path: Path
) -> None:
    output = _validate(manifests, version, tmp_path)
    built_in = [m for m in manifests if m["kind"] not in CUSTOM_KINDS]
    assert output.count(" passed for resource ") == len(built_in), output
    skipped = re.findall(r"find schema for kind (\w+)", output)
    assert set(skipped) == CUSTOM_KINDS  # and nothing else went unchecked


def test_the_schema_check_refuses_a_misspelt_field(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    broken = json.loads(json.dumps(_one(manifests, "Deployment")))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 40
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = _run(_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSIONS[0], str(path))
    assert result.returncode != 0
    assert "terminationGracePeriodSecond" in result.stdout


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def _containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(manifest)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_the_worker_drains_within_its_grace_period(manifests: list[dict[str, Any]]) -> None:
    config = _config(manifests)
    drain_timeout_s = float(config["CHATSTORE_DRAIN_TIMEOUT_S"])
    grace_s = _pod_spec(_one(manifests, "Deployment"))["terminationGracePeriodSeconds"]
    # Room for the batch in flight after the drain deadline, and for closing.
    assert grace_s >= drain_timeout_s + 10


def test_every_container_runs_unprivileged_on_a_read_only_root(
    manifests: list[dict[str, Any]],
) -> None:
    for manifest in (_one(manifests, "Deployment"), _one(manifests, "Job")):
        pod = _pod_spec(manifest)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(manifest):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert {"requests", "limits"} <= set(container["resources"]), container["name"]


def test_the_probes_ask_the_workers_health_endpoints(manifests: list[dict[str, Any]]) -> None:
    (worker,) = _containers(_one(manifests, "Deployment"))
    port = int(_config(manifests)["CHATSTORE_HTTP_PORT"])
    assert worker["ports"] == [{"name": "http", "containerPort": port}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert worker["args"] == ["worker"]


def test_the_configuration_names_real_settings_and_holds_no_secret(
    manifests: list[dict[str, Any]],
) -> None:
    data = _config(manifests)
    names = {name.removeprefix("CHATSTORE_").lower() for name in data}
    assert names <= set(Settings.model_fields)
    assert not names & {"database_url", "amqp_url"}  # URLs carry passwords: Secrets
    paths = {"database_sslrootcert", "amqp_cafile"}  # files that exist only in the pod
    values: dict[str, Any] = {
        name.removeprefix("CHATSTORE_").lower(): value
        for name, value in data.items()
        if name.removeprefix("CHATSTORE_").lower() not in paths
    }
    Settings(**values)  # every other value is one the worker accepts


def test_the_manifests_reference_secrets_and_contain_none(
    manifests: list[dict[str, Any]],
) -> None:
    assert not [m for m in manifests if m["kind"] == "Secret"]
    text = yaml.safe_dump_all(manifests)
    assert not re.search(r"://[^\s/:@]+:[^\s/@]+@", text), "a URL with a password"
    names = set(_secret_names(manifests))
    assert names == {"chatstore-worker", "chatstore-migrator", "chatstore-tls", "chatstore-keda"}
    documented = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    for secret in ("chatstore-worker", "chatstore-migrator", "chatstore-keda", "chatstore-tls"):
        assert secret in documented


def test_the_disruption_budget_and_the_scaler_target_the_worker(
    manifests: list[dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = _one(manifests, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["minAvailable"] < deployment["spec"]["replicas"]

    scaler = _one(manifests, "ScaledObject")
    assert scaler["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaler["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] > budget["minAvailable"]
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == topology.QUEUE
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert int(trigger["metadata"]["value"]) > 0
    authentication = _one(manifests, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
    assert authentication["spec"]["secretTargetRef"][0]["parameter"] == "host"


def test_the_migrate_job_migrates_then_grants(manifests: list[dict[str, Any]]) -> None:
    job = _one(manifests, "Job")
    (migrate,) = _pod_spec(job)["initContainers"]
    (grants,) = _pod_spec(job)["containers"]
    assert migrate["args"] == ["migrate"]
    assert grants["command"] == ["psql"]
    assert "--set=worker=chatstore_worker" in grants["args"]
    generated = {m["metadata"]["name"] for m in manifests if m["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in _pod_spec(job)["volumes"]}
    assert volumes["grants"]["configMap"]["name"] in generated
    assert _pod_spec(job)["restartPolicy"] == "Never"


# --- Compose, RabbitMQ definitions --------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def definitions() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    return loaded


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))


def test_the_compose_file_passes_the_compose_specification_schema() -> None:
    result = _check_compose(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_refuses_a_broken_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["grants"]["condition"] = "service_finished"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert _check_compose(path).returncode != 0


def test_compose_starts_the_services_in_order_with_two_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {
        name: {dep: cond["condition"] for dep, cond in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    assert conditions["grants"] == {"migrate": "service_completed_successfully"}
    assert conditions["worker"] == {
        "rabbitmq": "service_healthy",
        "grants": "service_completed_successfully",
    }
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("rabbitmq", "postgres", "worker"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    grace = int(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert grace > float(services["worker"]["environment"]["CHATSTORE_DRAIN_TIMEOUT_S"])
    for name in ("migrate", "worker"):
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]


def _rabbitmq_hash_matches(password_hash: str, password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


def test_compose_connects_as_the_least_privileged_users(
    compose: dict[str, Any], definitions: dict[str, Any]
) -> None:
    environment = compose["services"]["worker"]["environment"]
    amqp = urlsplit(environment["CHATSTORE_AMQP_URL"])
    users = {user["name"]: user for user in definitions["users"]}
    assert amqp.username == "chatstore-worker"
    assert amqp.password is not None
    assert _rabbitmq_hash_matches(users["chatstore-worker"]["password_hash"], amqp.password)
    assert users["chatstore-worker"]["tags"] == []
    assert amqp.path == "/" + definitions["vhosts"][0]["name"]
    database = urlsplit(environment["CHATSTORE_DATABASE_URL"])
    assert database.username == "chatstore_worker"
    postgres = compose["services"]["postgres"]["environment"]
    assert database.password == postgres["CHATSTORE_WORKER_PASSWORD"]
    migrator = urlsplit(compose["services"]["migrate"]["environment"]["CHATSTORE_DATABASE_URL"])
    assert (migrator.username, migrator.password) == (
        "chatstore_migrator",
        postgres["CHATSTORE_MIGRATOR_PASSWORD"],
    )


def test_the_definitions_declare_what_the_worker_declares(definitions: dict[str, Any]) -> None:
    """Declared with other arguments, the worker would stop with PRECONDITION_FAILED."""
    queues = {queue["name"]: queue for queue in definitions["queues"]}
    delivery_limit = Settings.model_fields["delivery_limit"].default
    assert queues[topology.QUEUE]["arguments"] == dict(topology.queue_arguments(delivery_limit))
    assert queues[topology.DLQ]["arguments"] == dict(topology.DLQ_ARGUMENTS)
    (exchange,) = definitions["exchanges"]
    assert (exchange["name"], exchange["type"], exchange["durable"]) == (
        topology.EXCHANGE,
        "topic",
        True,
    )
    bound = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert bound == {(topology.EXCHANGE, topology.QUEUE, key) for key in topology.ROUTING_KEYS}


# --- Dockerfile ----------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("hadolint"), "--no-color", str(path))


def test_the_dockerfile_passes_hadolint() -> None:
    result = _hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install gcc\nCMD chatstore worker\n")
    result = _hadolint(careless)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, as (INSTRUCTION, arguments), by stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_the_image_is_multi_stage_small_and_unprivileged() -> None:
    *build, final = _stages()
    assert build, "a build stage"
    instructions = dict(final)
    user = instructions["USER"].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in final)
    runs = " ".join(a for i, a in final if i == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs)
    assert json.loads(instructions["ENTRYPOINT"]) == ["chatstore"]  # exec form: PID 1
    assert json.loads(instructions["CMD"]) == ["worker"]
    assert "slim" in final[0][1] or "slim" in (ROOT / "Dockerfile").read_text()


def test_the_build_context_leaves_out_everything_but_the_package() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*")] == "*"  # deny all, then allow the package
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    # alembic/ is the migrations, which the wheel ships as worker/migrations.
    assert allowed == {"pyproject.toml", "README.md", "alembic", "contracts", "worker"}


def test_the_image_installs_the_wheel_built_from_the_sources() -> None:
    """The image runs what tests/test_wheel.py installs: the wheel, not the source tree."""
    *build, _final = _stages()
    copied = {a.split()[0] for stage in build for i, a in stage if i == "COPY"}
    assert {"alembic", "contracts", "worker"} <= copied  # the migrations go into the wheel
    runs = " && ".join(a for stage in build for i, a in stage if i == "RUN")
    steps = [step.strip() for step in re.split(r"&&|;", runs)]
    wheel = next(i for i, step in enumerate(steps) if re.search(r"pip wheel .*--no-deps", step))
    directory = re.search(r"(?:--wheel-dir|-w)[ =](\S+)", steps[wheel])
    assert directory is not None, steps[wheel]
    installs = [step for step in steps if re.search(r"pip install ", step)]
    assert installs, "the wheel is installed"
    assert steps.index(installs[0]) > wheel, "after it is built"
    for step in installs:  # the wheel file, never the source tree (".")
        assert re.search(re.escape(directory[1]) + r"/\S*\.whl", step), step


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _probe(code: str, port: int | None) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "CHATSTORE_HTTP_PORT"}
    if port is not None:
        environment["CHATSTORE_HTTP_PORT"] = str(port)
    command = [sys.executable, "-c", code]
    return subprocess.run(command, env=environment, capture_output=True, timeout=30).returncode


def test_the_healthcheck_probes_the_port_the_worker_listens_on() -> None:
    """Run as it is, outside Docker: it follows CHATSTORE_HTTP_PORT, 9100 by default."""
    (healthcheck,) = (a for i, a in _stages()[-1] if i == "HEALTHCHECK")
    python, flag, code = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert (python, flag) == ("python", "-c")
    assert re.search(r"\bCHATSTORE_HTTP_PORT\b", code)
    assert re.findall(r"\d{4,5}", code) == [str(Settings.model_fields["http_port"].default)]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert _probe(code, port) == 0
        assert _probe(code, free_port()) != 0  # a port nobody listens on
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
