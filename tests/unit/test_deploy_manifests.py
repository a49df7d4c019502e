"""The deploy files agree with Kubernetes, with the code and with each other.

Covers ``k8s/`` (strict schema validation against a pinned Kubernetes
version, offline), the ``Dockerfile`` and ``.dockerignore``, and the names
``MIGRATION.md`` relies on (settings, commands, endpoints, metrics).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from resync.core.pools.manager.budget import BudgetLine
from resync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MIGRATION = ROOT / "MIGRATION.md"

#: The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.33.0"
#: PostgreSQL's defaults: what an ordinary role may open is the difference.
PG_MAX_CONNECTIONS = 100
PG_SUPERUSER_RESERVED = 3
#: Seconds the grace period must keep beyond the shutdown sequence itself.
SHUTDOWN_MARGIN = 5

SETTINGS_FIELDS = frozenset(Settings.model_fields)
MANIFEST_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
#: Variables the Python runtime image sets for the interpreter, not for resync.
INTERPRETER_ENV = frozenset({"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})


# --- loading -------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def _all_resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFEST_FILES for doc in _documents(path)]


def _resource(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in _all_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} in k8s/, found {len(found)}"
    return found[0]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in _all_resources() if r["kind"] == kind]


def _configmap() -> dict[str, str]:
    (cm,) = _of_kind("ConfigMap")
    return dict(cm["data"])


def _secret() -> dict[str, str]:
    (secret,) = _of_kind("Secret")
    return dict(secret["stringData"])


def _stable() -> dict[str, Any]:
    return _resource("Deployment", "resync")


def _canary() -> dict[str, Any]:
    return _resource("Deployment", "resync-canary")


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def _main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in _containers(deployment) if c["name"] == "resync"]
    return container


# --- strict schema validation ----------------------------------------------


def test_k8s_directory_holds_every_manifest_the_issue_asks_for() -> None:
    kinds = sorted(r["kind"] for r in _all_resources())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_under_strict_schema_of_pinned_kubernetes(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path.name} holds no resource"
    for doc in documents:
        try:
            checked = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} invalid at {where}: {exc.message}")
        # A missing schema would fall back to an older version; insist on the pinned one.
        assert checked == KUBERNETES_VERSION.rsplit(".", 1)[0]


def test_kubernetes_validate_cli_passes_the_whole_directory_strictly() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            *map(str, MANIFEST_FILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The CLI only warns (exit 0) on an unknown kind: no warning may appear.
    assert "WARN" not in result.stdout and "ERROR" not in result.stdout, result.stdout
    assert result.stdout.count(" passed ") == len(_all_resources())


def test_strict_validation_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(_stable())
    _main_container(broken)["readinesProbe"] = {"httpGet": {"path": "/health/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_except_the_secret_example() -> None:
    (kustomization,) = _documents(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in MANIFEST_FILES} - {"secret.example.yaml"}
    assert set(listed) == expected
    # The example must never replace a real Secret through `kubectl apply -k`.
    assert not any(r["kind"] == "Secret" for name in listed for r in _documents(K8S / name))


# --- environment ----------------------------------------------------------


def _env_names_set_by_manifests() -> dict[str, str]:
    """Every variable name the manifests set, mapped to where it is set."""
    names = {key: "ConfigMap" for key in _configmap()}
    names.update({key: "Secret" for key in _secret()})
    for deployment in _of_kind("Deployment"):
        for container in _containers(deployment):
            for entry in container.get("env", []):
                names[entry["name"]] = f"{deployment['metadata']['name']} env"
    return names


def test_every_env_var_set_by_the_manifests_is_a_settings_field() -> None:
    names = _env_names_set_by_manifests()
    assert {"DATABASE_URL", "DB_POOL_MAX_SIZE", "WORKERS", "POOL_DRAIN_TIMEOUT"} <= set(names)
    unknown = {name: where for name, where in names.items() if name not in SETTINGS_FIELDS}
    assert not unknown, f"not fields of resync.settings.Settings (typo?): {unknown}"


def test_configmap_and_secret_values_build_valid_settings() -> None:
    values = {**_configmap(), **_secret()}
    built = Settings(_env_file=None, **values)
    for name, raw in values.items():
        value = getattr(built, name)
        if isinstance(value, bool):
            assert value is (raw.lower() == "true"), name
        elif isinstance(value, int | float):
            assert value == float(raw), name
        else:
            assert value == raw, name


def test_secret_example_holds_only_placeholders() -> None:
    for name, value in _secret().items():
        assert ".example.invalid" in value, f"{name} must point at a reserved .invalid host"
        if "@" in value:
            assert "CHANGE-ME" in value, f"{name} must carry a CHANGE-ME password"


def test_deployments_load_env_from_the_configmap_and_the_secret() -> None:
    (cm,) = _of_kind("ConfigMap")
    (secret,) = _of_kind("Secret")
    for deployment in _of_kind("Deployment"):
        sources = _main_container(deployment)["envFrom"]
        config_refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
        secret_refs = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
        assert config_refs == [cm["metadata"]["name"]]
        assert secret_refs == [secret["metadata"]["name"]]


def test_command_references_only_variables_the_pod_defines() -> None:
    defined = set(_env_names_set_by_manifests())
    for deployment in _of_kind("Deployment"):
        container = _main_container(deployment)
        argv = [*container.get("command", []), *container.get("args", [])]
        referenced = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)))
        assert referenced <= defined, referenced - defined
        assert argv[:2] == ["resync", "serve"]
        # WORKERS is what the budget is computed with: the process count must follow it.
        assert argv[argv.index("--workers") + 1] == "$(WORKERS)"


# --- probes, ports, shutdown ------------------------------------------------


def test_probes_hit_live_and_ready_on_the_container_port() -> None:
    port = int(_configmap()["PORT"])
    for deployment in _of_kind("Deployment"):
        container = _main_container(deployment)
        (declared,) = container["ports"]
        assert declared["containerPort"] == port
        probes = {
            kind: container[kind]["httpGet"]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probes["startupProbe"]["path"] == "/health/live"
        assert probes["livenessProbe"]["path"] == "/health/live"
        assert probes["readinessProbe"]["path"] == "/health/ready"
        for probe in probes.values():
            assert probe["port"] in (declared["name"], declared["containerPort"])


def test_service_targets_the_container_port_of_both_tracks() -> None:
    service = _resource("Service", "resync")
    (port,) = service["spec"]["ports"]
    for deployment in (_stable(), _canary()):
        names = {p["name"] for p in _main_container(deployment)["ports"]}
        assert port["targetPort"] in names


def _prestop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    words = shlex.split(command[-1]) if command[0] in ("sh", "/bin/sh") else command
    assert words[0] in ("sleep", "/bin/sleep"), command
    return float(words[1])


def test_grace_period_covers_prestop_and_both_drain_phases() -> None:
    drain = float(_configmap()["POOL_DRAIN_TIMEOUT"])
    assert drain > 0
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = _prestop_seconds(_main_container(deployment))
        assert pre_stop > 0, "without a preStop pause new requests reach a closing pod"
        # uvicorn waits up to POOL_DRAIN_TIMEOUT for requests in flight, then the
        # lifespan drains the pools for up to POOL_DRAIN_TIMEOUT more.
        needed = pre_stop + 2 * drain + SHUTDOWN_MARGIN
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= needed, f"{deployment['metadata']['name']}: {grace}s < {needed}s"


def test_pods_run_as_non_root_with_bounded_resources() -> None:
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"].get("runAsUser", 1) != 0
        for container in _containers(deployment):
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[section]), (container["name"], section)
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- tracks, autoscaling, disruption ---------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_canary_differs_from_stable_only_in_name_track_replicas_and_image() -> None:
    stable, canary = copy.deepcopy(_stable()), copy.deepcopy(_canary())
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert stable["spec"]["template"]["metadata"]["labels"]["track"] == "stable"
    for deployment in (stable, canary):
        deployment["metadata"].pop("name")
        deployment["spec"].pop("replicas", None)
        _main_container(deployment).pop("image")
    as_text = json.dumps(canary, sort_keys=True).replace('"canary"', '"stable"')
    assert json.loads(as_text) == stable


def test_service_selects_both_tracks_and_the_tracks_do_not_overlap() -> None:
    service = _resource("Service", "resync")
    stable, canary = _stable(), _canary()
    stable_labels = stable["spec"]["template"]["metadata"]["labels"]
    canary_labels = canary["spec"]["template"]["metadata"]["labels"]
    assert stable_labels["app"] == canary_labels["app"]
    assert _selects(service["spec"]["selector"], stable_labels)
    assert _selects(service["spec"]["selector"], canary_labels)
    # Overlapping Deployment selectors make the two controllers fight over pods.
    assert not _selects(stable["spec"]["selector"]["matchLabels"], canary_labels)
    assert not _selects(canary["spec"]["selector"]["matchLabels"], stable_labels)
    for deployment in (stable, canary):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)


def test_hpa_owns_the_stable_replica_count() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _stable()["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A replicas field would reset the HPA's choice on every `kubectl apply`.
    assert "replicas" not in _stable()["spec"]


def test_pdb_covers_the_stable_pods_and_allows_a_drain() -> None:
    (pdb,) = _of_kind("PodDisruptionBudget")
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    stable_labels = _stable()["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], stable_labels)
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1


# --- connection budget ----------------------------------------------------


def _budget_from_manifests() -> dict[str, int]:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    surge = _stable()["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert isinstance(surge, int), "the budget needs maxSurge as a pod count, not a percentage"
    config = _configmap()
    return {
        "maxReplicas": hpa["spec"]["maxReplicas"],
        "maxSurge": surge,
        "canary": _canary()["spec"]["replicas"],
        "WORKERS": int(config["WORKERS"]),
        "DB_POOL_MAX_SIZE": int(config["DB_POOL_MAX_SIZE"]),
    }


def _peak_pods(budget: dict[str, int]) -> int:
    return budget["maxReplicas"] + budget["maxSurge"] + budget["canary"]


def _peak_connections(budget: dict[str, int]) -> int:
    # The arithmetic of resync.core.pools.manager.budget (the manager's start-up check
    # and `resync plan`), not a copy of it.
    line = BudgetLine(
        "database",
        "database",
        budget["DB_POOL_MAX_SIZE"],
        _peak_pods(budget) * budget["WORKERS"],
        PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED,
        workers=budget["WORKERS"],
    )
    return line.total


def _resync_plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`resync plan --json --offline` with the environment the pods get (ConfigMap + Secret)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **_configmap(), **_secret()}
    command = [str(Path(sys.executable).with_name("resync")), "plan", "--json", "--offline"]
    return subprocess.run(
        [*command, *args],
        env=env,
        cwd=tmp_path,  # no stray .env
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _planned_pools(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {line["pool"]: line for line in json.loads(result.stdout)["pools"]}


def test_peak_database_connections_fit_postgres_default_limit() -> None:
    peak = _peak_connections(_budget_from_manifests())
    assert peak <= PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED, _budget_from_manifests()


def test_budget_comment_in_configmap_matches_the_manifests() -> None:
    text = (K8S / "configmap.yaml").read_text(encoding="utf-8")
    limit = re.search(r"max_connections (\d+) - superuser_reserved_connections (\d+) = (\d+)", text)
    pods = re.search(r"maxReplicas (\d+) \+ maxSurge (\d+) \+ canary (\d+) = (\d+)", text)
    peak = re.search(r"pods (\d+) x WORKERS (\d+) x DB_POOL_MAX_SIZE (\d+) = (\d+) <= (\d+)", text)
    assert limit and pods and peak, "the budget lines of configmap.yaml changed shape"
    budget = _budget_from_manifests()
    assert [int(g) for g in limit.groups()] == [
        PG_MAX_CONNECTIONS,
        PG_SUPERUSER_RESERVED,
        PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED,
    ]
    total_pods = budget["maxReplicas"] + budget["maxSurge"] + budget["canary"]
    assert [int(g) for g in pods.groups()] == [
        budget["maxReplicas"],
        budget["maxSurge"],
        budget["canary"],
        total_pods,
    ]
    assert [int(g) for g in peak.groups()] == [
        total_pods,
        budget["WORKERS"],
        budget["DB_POOL_MAX_SIZE"],
        _peak_connections(budget),
        PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED,
    ]


def test_budget_check_notices_a_fleet_that_outgrows_postgres() -> None:
    budget = _budget_from_manifests()
    grown = {**budget, "maxReplicas": budget["maxReplicas"] * 2}
    assert _peak_connections(grown) > PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED


def test_hpa_max_replicas_is_within_what_resync_plan_allows(tmp_path: Path) -> None:
    budget = _budget_from_manifests()
    pods = _peak_pods(budget)
    limits = [
        f"--db-max-connections={PG_MAX_CONNECTIONS}",
        f"--db-reserved={PG_SUPERUSER_RESERVED}",
        "--redis-maxclients=10000",
    ]
    result = _resync_plan(tmp_path, f"--replicas={pods}", *limits)
    assert result.returncode == 0, result.stdout + result.stderr
    planned = _planned_pools(result)
    database = planned["database"]
    assert database["total"] == _peak_connections(budget)
    assert database["fits"] is True
    # maxReplicas plus the pods a rollout and the canary add must fit what plan allows.
    assert budget["maxReplicas"] + budget["maxSurge"] + budget["canary"] <= database["max_replicas"]
    assert planned["redis"]["fits"] is True
    # Twice the HPA's reach would not fit: plan says so with exit code 1.
    grown = _resync_plan(tmp_path, f"--replicas={2 * pods}", *limits)
    assert grown.returncode == 1
    assert _planned_pools(grown)["database"]["fits"] is False


# --- Dockerfile -----------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _env_pairs(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=value, not the legacy form: {rest}"
                env[key] = value
    return env


def _exec_form(arguments: str) -> list[str]:
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec (JSON array) form: {arguments}")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
    return argv


def _healthcheck_argv() -> list[str]:
    runtime = _stages(DOCKERFILE)[-1]
    (healthcheck,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    command = healthcheck[healthcheck.index("CMD ") + len("CMD ") :]
    return _exec_form(command)


def test_dockerfile_is_multi_stage_and_the_runtime_copies_only_the_build() -> None:
    stages = _stages(DOCKERFILE)
    assert len(stages) >= 2
    builder_name = stages[0][0][1].split()[-1]
    assert stages[0][0][1].split()[-2].upper() == "AS"
    copies = [rest for keyword, rest in stages[-1] if keyword == "COPY"]
    assert copies and all(rest.startswith(f"--from={builder_name} ") for rest in copies)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    runtime = _stages(DOCKERFILE)[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Kubernetes can only verify runAsNonRoot for a numeric user.
    assert user.isdigit()
    pod_user = _stable()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert int(user) == pod_user


def test_dockerfile_starts_resync_serve_in_exec_form() -> None:
    runtime = _stages(DOCKERFILE)[-1]
    entry = [_exec_form(rest) for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    cmd = [_exec_form(rest) for keyword, rest in runtime if keyword == "CMD"]
    assert cmd, "the runtime stage needs a CMD"
    argv = (entry[-1] if entry else []) + cmd[-1]
    assert argv == ["resync", "serve"]


def test_dockerfile_listens_on_all_interfaces_on_the_exposed_port() -> None:
    runtime = _stages(DOCKERFILE)[-1]
    env = _env_pairs(runtime)
    assert env["HOST"] == "0.0.0.0"
    exposed = [rest.split("/")[0] for keyword, rest in runtime if keyword == "EXPOSE"]
    assert exposed == [env["PORT"]]
    assert env["PORT"] == _configmap()["PORT"]
    assert set(env) - INTERPRETER_ENV <= SETTINGS_FIELDS


def test_dockerfile_healthcheck_probes_liveness_with_python() -> None:
    argv = _healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert "/health/live" in argv[2] and "urllib" in argv[2]


def test_builder_copies_what_the_wheel_build_needs_and_dockerignore_keeps_it() -> None:
    builder = _stages(DOCKERFILE)[0]
    copied: set[str] = set()
    for keyword, rest in builder:
        if keyword == "COPY":
            copied.update(rest.split()[:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    readme = project["readme"]
    assert {"pyproject.toml", readme, "resync"} <= copied
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not {"pyproject.toml", readme, "resync", "*", "**"} & ignored
    # Secrets and local state must never reach the build context.
    assert {".env", ".git", ".venv"} <= ignored


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health/live" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _run_healthcheck(port: int) -> int:
    argv = _healthcheck_argv()
    # A proxy nobody listens on: the check must talk to the container directly.
    proxy = "http://127.0.0.1:9"
    env = {"PORT": str(port), "PATH": "/usr/bin:/bin", "http_proxy": proxy, "HTTP_PROXY": proxy}
    completed = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return completed.returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (500, False)])
def test_healthcheck_command_passes_only_on_a_2xx_live_answer(
    health_server: ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    health_server.RequestHandlerClass = handler
    code = _run_healthcheck(health_server.server_address[1])
    assert (code == 0) is healthy


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _run_healthcheck(port) != 0


# --- MIGRATION.md names ---------------------------------------------------


def _migration() -> str:
    return MIGRATION.read_text(encoding="utf-8")


def test_migration_names_only_real_settings() -> None:
    # $NAME is a shell variable of an example, not a setting.
    tokens = set(re.findall(r"(?<![$\w])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", _migration()))
    # *_POOL_X stands for the same setting of every backend.
    wildcard = {t for t in re.findall(r"\*(_POOL_[A-Z_]+)", _migration())}
    assert {"DATABASE_URL", "DB_POOL_MAX_SIZE", "POOL_DRAIN_TIMEOUT"} <= tokens
    unknown = {t for t in tokens if t not in SETTINGS_FIELDS and t not in wildcard}
    assert not unknown, f"MIGRATION.md names settings that do not exist: {sorted(unknown)}"
    for suffix in wildcard:
        for prefix in ("DB", "REDIS", "HTTP"):
            assert prefix + suffix in SETTINGS_FIELDS, prefix + suffix


def test_migration_names_only_real_cli_commands() -> None:
    import typer.main

    from resync.cli import app

    group: Any = typer.main.get_command(app)
    # `resync X` in inline code, at the start of a code line, or after `kubectl exec ... --`.
    used = set(re.findall(r"(?:`|^|-- )resync ([a-z]+)", _migration(), flags=re.MULTILINE))
    assert {"serve", "check", "config", "stats"} <= used
    assert used <= set(group.commands), used - set(group.commands)


async def test_migration_names_only_endpoints_the_service_serves() -> None:
    import httpx
    from asgi_lifespan import LifespanManager

    from resync.api.app import create_app

    paths = set(re.findall(r"(?<![\w.])(/health/[a-z]+|/metrics|/pools)\b", _migration()))
    assert {"/health/live", "/health/ready", "/metrics", "/pools"} <= paths
    settings = Settings(_env_file=None, DATABASE_URL="sqlite+aiosqlite:///:memory:")
    app = create_app(settings, include_examples=False)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path in sorted(paths):
                response = await client.get(path)
                assert response.status_code == 200, (path, response.status_code)


async def test_migration_names_only_metrics_the_service_exports() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from resync.core.pools.base_pool import ConnectionPoolConfig
    from resync.core.prometheus import build_registry
    from resync.testing.memory_pool import InMemoryPool

    pool = InMemoryPool(ConnectionPoolConfig(pool_name="database", min_size=1, max_size=2))
    await pool.initialize()
    try:
        async with pool.get_connection():
            pass
        registry = build_registry(lambda: {"database": pool}, lambda: {"database": "healthy"})
        text = generate_latest(registry).decode()
    finally:
        await pool.close()
    exported: set[str] = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    # The circuit-breaker family only has samples for a pool with a breaker.
    exported.update(re.findall(r"^# TYPE (\S+)", text, flags=re.MULTILINE))

    doc = _migration()
    table = doc[doc.index("<!-- metric-names:begin") : doc.index("<!-- metric-names:end")]
    in_table = set(re.findall(r"`((?:db_client_connection|resync_pool)_[a-z_]+)", table))
    assert len(in_table) >= 10
    anywhere = set(re.findall(r"\b((?:db_client_connection|resync_pool)_[a-z_]+)", doc))
    missing = {name for name in anywhere if name not in exported}
    assert not missing, f"MIGRATION.md names metrics the service does not export: {missing}"
    # Names used in prose or PromQL must come from the table: one place to rename.
    suffixes = ("", "_bucket", "_sum", "_count")
    outside = {n for n in anywhere if not any(n == t + sfx for t in in_table for sfx in suffixes)}
    assert not outside, f"metrics used in MIGRATION.md but missing from its table: {outside}"
