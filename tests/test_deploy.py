"""The deployment files: the Dockerfile and the Kubernetes manifests under deploy/kubernetes.

The manifests are parsed and cross-checked (probes, ports, names, the drain against the grace period, the
Dockerfile's config path against the ConfigMap's mount, the autoscaler against the Deployment, the
gateway's redis URL against the bundled Redis); the ConfigMap's config is laid out on disk as the
Deployment would mount it and given to a real ``portico check`` and a real gateway (on a real Redis).
The image itself is not built here: neither this machine nor CI runs a Docker daemon, so the test builds
what the image's first stage builds (the wheel, from exactly the files the Dockerfile copies) instead.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy import config
from tests.gateway_process import serve_gateway

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLE_SECRET = "secret.example.yaml"
GATEWAY = "portico"  # the gateway's Deployment, Service, ConfigMap and autoscaler
REDIS = "portico-redis"  # the bundled Redis's Deployment and Service
JWT_SECRET = "a-test-secret-of-more-than-32-bytes-0123456789"


# -- reading the files ----------------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of a file (a manifest may hold several), empty ones left out."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``, when several have that kind) among the manifests."""
    found = [
        doc
        for path in manifest_files()
        for doc in documents(path)
        if doc.get("kind") == kind and name in (None, doc["metadata"].get("name"))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(name: str = GATEWAY) -> dict[str, Any]:
    spec: dict[str, Any] = the("Deployment", name)["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    containers: dict[str, dict[str, Any]] = {c["name"]: c for c in pod_spec()["containers"]}
    return containers["portico"]


def redis_container() -> dict[str, Any]:
    (container,) = pod_spec(REDIS)["containers"]
    resolved: dict[str, Any] = container
    return resolved


def container_port(port: int | str) -> int:
    """A probe's or Service's port, resolved through the container's named ports."""
    ports = gateway_container()["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"{port} is not a container port"
        return port
    named = {p["name"]: p["containerPort"] for p in ports if "name" in p}
    assert port in named, f"{port!r} names no container port"
    return int(named[port])


def configmap_data() -> dict[str, str]:
    data: dict[str, str] = the("ConfigMap")["data"]
    return data


def gateway_config_text() -> str:
    return configmap_data()["portico.yaml"]


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def instruction(name: str) -> list[str]:
    """The last ``name`` instruction of the runtime stage, as an exec-form (JSON array) list."""
    found = [line for line in dockerfile_lines() if line.split(None, 1)[0].upper() == name]
    assert found, f"the Dockerfile has no {name}"
    value = found[-1].split(None, 1)[1]
    parsed = json.loads(value) if value.startswith("[") else value.split()
    return [str(part) for part in parsed]


def mount_layout(root: Path) -> dict[str, Path]:
    """Each of the container's mount paths, as a directory under ``root`` holding what Kubernetes would
    put there: a ConfigMap's keys as files, an empty directory for an emptyDir."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    layout: dict[str, Path] = {}
    for mount in gateway_container()["volumeMounts"]:
        directory = root / mount["name"]
        directory.mkdir(parents=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == the("ConfigMap")["metadata"]["name"]
            for key, text in configmap_data().items():
                (directory / key).write_text(text, encoding="utf-8")
        layout[mount["mountPath"]] = directory
    return layout


def mounted_config(root: Path) -> Path:
    """The ConfigMap's portico.yaml where the Deployment mounts it, its absolute paths moved under
    ``root`` the way the mounts are laid out there."""
    layout = mount_layout(root)
    config_path = Path(instruction("CMD")[instruction("CMD").index("--config") + 1])
    assert str(config_path.parent) in layout, f"nothing is mounted at {config_path.parent}"
    # One pass, longest mount path first, so a rewritten path is never rewritten again (/tmp is a mount).
    mounts = "|".join(re.escape(path) for path in sorted(layout, key=len, reverse=True))
    text = re.sub(rf"(?<![\w./-])({mounts})/", lambda m: f"{layout[m.group(1)]}/", gateway_config_text())
    target = layout[str(config_path.parent)] / config_path.name
    target.write_text(text, encoding="utf-8")
    return target


# -- the manifests --------------------------------------------------------------------------------------


def test_every_manifest_parses_as_kubernetes_objects() -> None:
    kinds = []
    for path in manifest_files():
        docs = documents(path)
        assert docs, f"{path.name} holds no document"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: not a Kubernetes object"
            assert doc["metadata"].get("name"), f"{path.name}: a {doc['kind']} without a name"
            kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Secret",
        "Service",
        "Service",
    ]


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = documents(KUBE / "kustomization.yaml")
    listed = kustomization["resources"]
    expected = [p.name for p in manifest_files() if p.name != EXAMPLE_SECRET]
    assert sorted(listed) == expected
    # A committed secret is no secret: the real one is created by hand (deploy/README.md).
    assert EXAMPLE_SECRET not in listed


def test_probes_ask_readyz_and_healthz_on_the_container_port() -> None:
    container = gateway_container()
    served = container_port("http")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(get["port"]) == served, probe
    listen = config.parse(gateway_config_text()).listen
    assert listen.port == served
    assert listen.host == "0.0.0.0"  # noqa: S104  # a pod must answer on its own address


def test_grace_period_outlasts_the_pause_and_the_drain() -> None:
    drain = config.parse(gateway_config_text()).listen.drain_seconds
    pause = 0.0
    pre_stop = gateway_container().get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if pre_stop:
        assert pre_stop[0] == "sleep"
        pause = float(pre_stop[1])
    assert pod_spec()["terminationGracePeriodSeconds"] > pause + drain


def test_the_pod_runs_locked_down_within_limits() -> None:
    spec, container = pod_spec(), gateway_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    # The image's user is the pod's, and its working directory (where relative paths land) is writable.
    assert instruction("USER")[0].split(":")[0] == str(spec["securityContext"]["runAsUser"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert instruction("WORKDIR")[0] in mounts


def test_names_and_ports_agree_across_manifests() -> None:
    service, template = the("Service", GATEWAY), the("Deployment", GATEWAY)["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert the("Deployment", GATEWAY)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        container_port(port["targetPort"])
    secret = the("Secret")
    (variable,) = [e for e in gateway_container()["env"] if e["name"] == "PORTICO_JWT_SECRET"]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container_port("http")


def selects(service: dict[str, Any], deployment: dict[str, Any]) -> bool:
    selector = service["spec"]["selector"].items()
    return selector <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_gateway_scales_on_cpu_from_several_replicas() -> None:
    autoscaler, deployment = the("HorizontalPodAutoscaler"), the("Deployment", GATEWAY)
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 2 <= autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]
    # The autoscaler owns the count: a replicas field would be reapplied over its choice on every apply.
    assert "replicas" not in deployment["spec"]
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    # Utilisation is a share of what every container of the pod requests: without a request, no scaling.
    for container in pod_spec()["containers"]:
        assert "cpu" in container["resources"]["requests"], container["name"]


def test_the_replicas_share_the_bundled_redis_and_nothing_else() -> None:
    redis_service, redis_deployment = the("Service", REDIS), the("Deployment", REDIS)
    gateway_service, gateway_deployment = the("Service", GATEWAY), the("Deployment", GATEWAY)
    # Each Service selects its own pods only.
    assert selects(redis_service, redis_deployment) and not selects(redis_service, gateway_deployment)
    assert selects(gateway_service, gateway_deployment) and not selects(gateway_service, redis_deployment)
    named = {p["name"]: p["containerPort"] for p in redis_container()["ports"]}
    (port,) = redis_service["spec"]["ports"]
    assert named[port["targetPort"]] == 6379
    # The gateway's redis: section names that Service, by its in-cluster DNS name.
    url = urlsplit(str(config.parse(gateway_config_text()).redis.url))  # type: ignore[union-attr]
    assert (url.scheme, url.hostname, url.port) == ("redis", redis_service["metadata"]["name"], port["port"])
    assert redis_deployment["spec"]["replicas"] == 1
    # Any replica may serve any request: no stickiness, and no state kept in one pod's files.
    assert gateway_service["spec"].get("sessionAffinity", "None") == "None"
    auth = next(p for p in config.parse(gateway_config_text()).plugins if p.name == "auth")
    assert auth.options["token_store"] is None


def test_the_bundled_redis_runs_locked_down_and_keeps_nothing() -> None:
    spec, container = pod_spec(REDIS), redis_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    args = container["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    # Full means refused writes, never silently evicted state; and Redis fills up before its pod is killed.
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb")
    assert container["resources"]["limits"]["memory"].endswith("Mi")
    assert int(maxmemory.removesuffix("mb")) < int(
        container["resources"]["limits"]["memory"].removesuffix("Mi")
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data" in mounts  # the image's working directory, writable under a read-only root


# -- the Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_runs_the_gateway_on_the_mounted_config() -> None:
    assert instruction("ENTRYPOINT") == ["portico"]
    command = instruction("CMD")
    assert command[0] == "serve"
    config_path = Path(command[command.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in gateway_container()["volumeMounts"]}
    assert mounts.get(str(config_path.parent)) == "config"
    assert config_path.name in configmap_data()
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    assert [int(port) for port in instruction("EXPOSE")] == [container_port("http")]
    # Kubernetes runs the image's CMD: the Deployment must not point the gateway elsewhere.
    assert "args" not in gateway_container()
    assert "command" not in gateway_container()
    assert any(line.startswith("FROM python:3.11-slim") for line in dockerfile_lines())
    assert "/healthz" in " ".join(instruction("HEALTHCHECK"))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave ``path`` (or a directory above it) out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], bare):
                return True
    return False


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "the check below does not handle exceptions"
    copied = [
        line.split()[1:-1] for line in dockerfile_lines() if line.startswith("COPY") and "--from" not in line
    ]
    sources = [source for group in copied for source in group]
    assert "proxy" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not ignored(source, patterns), f".dockerignore leaves out {source}, which the build copies"
    for local in (".venv", ".git", ".cache", ".portico", ".pytest_cache", "proxy/__pycache__/x.pyc"):
        assert ignored(local, patterns), f".dockerignore lets {local} into the build context"


# -- the config, as mounted, in real processes ----------------------------------------------------------


def run_check(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config_path.parent,
        timeout=60,
    )


def test_configmap_config_passes_portico_check(tmp_path: Path) -> None:
    config_path = mounted_config(tmp_path)
    env = {**os.environ, "PORTICO_JWT_SECRET": JWT_SECRET, "PYTHONPATH": str(ROOT)}
    checked = run_check(config_path, env)
    assert checked.returncode == 0, checked.stderr
    assert "chain: auth -> policy -> request_log" in checked.stdout
    assert "weather: stdio" in checked.stdout and "notes: stdio" in checked.stdout
    # The secret really comes from the environment: without it the config is refused, in one line.
    env.pop("PORTICO_JWT_SECRET")
    refused = run_check(config_path, env)
    assert refused.returncode == 1
    assert "PORTICO_JWT_SECRET is not set" in refused.stderr
    assert "Traceback" not in refused.stderr


def http_get(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """GET ``url``, or POST ``body`` to it as an MCP client would; the status and the body."""
    request = urllib.request.Request(url)  # noqa: S310  # a local test URL
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json, text/event-stream")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # a local test URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_probes_answer_without_a_token_while_mcp_requires_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("PORTICO_JWT_SECRET", JWT_SECRET)
    settings = yaml.safe_load(mounted_config(tmp_path / "mounts").read_text(encoding="utf-8"))
    # A test gateway listens on loopback, on a free port (serve_gateway passes --port 0), and its Redis
    # is a real one on loopback in place of the in-cluster Service.
    settings["listen"]["host"] = "127.0.0.1"
    settings["redis"]["url"] = redis_url
    workdir = tmp_path / "work"
    workdir.mkdir()
    with serve_gateway(workdir, settings) as gateway:
        deadline = time.monotonic() + 60
        while (ready := http_get(gateway.base + "/readyz"))[0] != 200:
            assert ready[0] == 503, ready
            assert time.monotonic() < deadline, f"never ready: {ready[1]!r}"
            time.sleep(0.2)
        assert sorted(json.loads(ready[1])["ready"]) == ["notes", "weather"]
        assert http_get(gateway.base + "/healthz")[0] == 200
        status, metrics = http_get(gateway.base + "/metrics")
        assert status == 200 and b"portico_backend_up" in metrics
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        assert http_get(gateway.mcp, ping)[0] == 401


# -- the tools, when this machine has them --------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_listed_object_with_the_image_tag() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (kustomization,) = documents(KUBE / "kustomization.yaml")
    expected = [
        (doc["kind"], doc["metadata"]["name"])
        for name in kustomization["resources"]
        for doc in documents(KUBE / name)
    ]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(expected)
    (deployment,) = [o for o in objects if (o["kind"], o["metadata"]["name"]) == ("Deployment", GATEWAY)]
    (tag,) = [image["newTag"] for image in kustomization["images"] if image["name"] == "portico"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"portico:{tag}"


@pytest.mark.timeout(300)
def test_the_image_build_context_is_enough_to_build_the_wheel(tmp_path: Path) -> None:
    """The image's first stage, without Docker (which neither this machine nor CI can run): exactly the
    files the Dockerfile copies build Portico's wheel, and it carries the demo config and the plugins'
    entry points the image relies on."""
    copied = re.findall(r"^COPY (?!--)(.+) \S+$", (ROOT / "Dockerfile").read_text(), flags=re.M)
    context = tmp_path / "context"
    context.mkdir()
    for line in copied[:3]:  # the build stage's COPY lines (the rest are the runtime stage's)
        for name in line.split():
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, context / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "out"),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("mcp_portico-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "proxy/demo/portico.yaml" in names and "plugins/auth/plugin.py" in names
    assert "portico = proxy.cli:main" in entry_points and "auth = plugins.auth:Auth" in entry_points
