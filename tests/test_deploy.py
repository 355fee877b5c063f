"""Offline checks of the deployment material in deploy/ and docs/deployment.md.

Needs `kubernetes-validate` and `pyyaml` (dev extras) and an `nginx` binary (`.ci/run` installs
it). None of them is optional: a missing one fails these tests instead of skipping them.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
NGINX_DIR = DEPLOY / "nginx"
NGINX_CONFIGS = sorted(NGINX_DIR.glob("*.conf"))
CONTAINERFILE = DEPLOY / "Containerfile"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
DOC = ROOT / "docs" / "deployment.md"
K8S_VERSIONS = ["1.29.0", "1.33.0"]  # oldest supported upstream release we target, and a recent one

try:
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - a broken environment, reported by every test
    raise ImportError(
        f"{exc}: tests/test_deploy.py needs `kubernetes-validate` and `pyyaml` (dev extras in pyproject.toml)"
    ) from exc


# ---------------------------------------------------------------------------------------- helpers


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _resources() -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in _docs(path)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in _resources() if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container()["env"] if "value" in e}


def _assert_attr_path_exists(spec: str) -> None:
    """`module:Attr` names a module file in this repository that defines `Attr`."""
    module, _, attr = spec.partition(":")
    assert module, f"not MODULE:ATTR: {spec!r}"
    assert attr, f"not MODULE:ATTR: {spec!r}"
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{spec}: {path.relative_to(ROOT)} does not exist"
    assert re.search(rf"^class {re.escape(attr)}\b", path.read_text(), re.M), f"{spec}: no class {attr} in {path}"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not an nginx/envoy duration: {value!r}"
    unit = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


# ------------------------------------------------------------------------------------- kubernetes


def test_kubernetes_manifests_exist() -> None:
    kinds = sorted(r["kind"] for r in _resources())
    assert kinds == sorted(["Deployment", "Service", "Service", "PodDisruptionBudget", *["Secret"] * 4])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_kubernetes_manifest_validates(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_catches_mistakes() -> None:
    """The validator really rejects a wrong field, a wrong type and an unknown field (strict)."""
    for mutate in (
        lambda d: d["spec"].__setitem__("replicas", "three"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("probes", {}),
        lambda d: d["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 45),
    ):
        deployment = _one("Deployment")
        mutate(deployment)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files())


def test_deployment_rollout_and_drain() -> None:
    deployment = _one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    drain_deadline = float(_env()["VGI_FLIGHT_DRAIN_DEADLINE"])
    assert drain_deadline > 0
    pre_stop = _container().get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_sleep = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop_sleep + drain_deadline, (
        f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop_sleep} s + drain deadline"
        f" {drain_deadline} s, or the kubelet kills replicas mid-drain"
    )


def test_deployment_runs_the_serve_command() -> None:
    container = _container()
    assert "command" not in container, "keep the image's ENTRYPOINT (vgi-flight serve)"
    args = container["args"]
    _assert_attr_path_exists(args[0])
    _assert_attr_path_exists(args[args.index("--protocol") + 1])
    assert container["ports"] == [{"name": "grpc", "containerPort": 8815, "protocol": "TCP"}]
    env = _env()
    assert env["VGI_FLIGHT_LOCATION"].endswith(":8815")
    assert all(name.startswith("VGI_FLIGHT_") or name == "POD_NAMESPACE" for name in env)


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_deployment_probes_use_vgi_flight_health(probe: str) -> None:
    container = _container()
    command = container[probe]["exec"]["command"]
    assert command[:2] == ["vgi-flight", "health"]
    location = command[2]
    assert location.startswith("grpc+tls://localhost:")
    assert location.rsplit(":", 1)[1] == _env()["VGI_FLIGHT_LOCATION"].rsplit(":", 1)[1]
    # Every file the probe reads is mounted.
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for arg in command[3:]:
        if arg.startswith("/"):
            assert any(arg.startswith(m + "/") for m in mounts), f"{probe}: {arg} is not mounted"
    assert container["readinessProbe"]["failureThreshold"] == 1, "a draining replica must leave at once"


@pytest.mark.parametrize(
    "variable",
    [
        "VGI_FLIGHT_TOKEN_KEY_FILE",
        "VGI_FLIGHT_TLS_CERT",
        "VGI_FLIGHT_TLS_KEY",
        "VGI_FLIGHT_CLIENT_CA",
        "VGI_FLIGHT_HMAC_KEYS_FILE",
    ],
)
def test_deployment_secret_files_come_from_secrets(variable: str) -> None:
    """Each key/cert file the server reads is a key of a Secret mounted read-only at that path."""
    path = Path(_env()[variable])
    container = _container()
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount.get("readOnly") is True
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    assert path.name in _one("Secret", secret_name)["data"], f"Secret {secret_name} has no key {path.name}"


def test_deployment_security_context() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    # Python needs a writable /tmp on a read-only root filesystem.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_services_and_disruption_budget() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service", "vgi-flight")
    headless = _one("Service", "vgi-flight-headless")
    assert service["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert svc["spec"]["ports"] == [
            {"name": "grpc", "port": 8815, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
        ]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["minAvailable"] < _one("Deployment")["spec"]["replicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_example_secrets_hold_only_placeholders() -> None:
    secrets = [r for r in _resources() if r["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert "stringData" not in secret
        for key, value in secret["data"].items():
            assert base64.b64decode(value, validate=True) == b"REPLACE_ME", f"{secret['metadata']['name']}/{key}"


# ------------------------------------------------------------------------------------------ nginx


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed: `.ci/run` installs it (apt-get install nginx-light)")
    return found


def _nginx_test(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_nginx(), "-e", "stderr", "-t", "-c", str(config)], capture_output=True, text=True, timeout=60, check=False
    )


def _pki(out: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "certs" / "generate.py"), "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _prepare(config: Path, where: Path) -> Path:
    """Copy a config with the certificate files it names (generated dev PKI) into `where`."""
    copy = where / config.name
    shutil.copyfile(config, copy)
    text = config.read_text()
    if "tls/" in text:
        _pki(where / "tls")
    if "upstream/" in text:
        _pki(where / "upstream", "--principal", "nginx-proxy", "--server-name", "vgi-flight.internal")
    return copy


def test_nginx_configs_exist() -> None:
    assert [p.name for p in NGINX_CONFIGS] == ["nginx-tls.conf", "nginx.conf"]


def test_nginx_plain_config_passes_nginx_t_in_place() -> None:
    result = _nginx_test(NGINX_DIR / "nginx.conf")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("config", NGINX_CONFIGS, ids=lambda p: p.name)
def test_nginx_config_passes_nginx_t(config: Path, tmp_path: Path) -> None:
    result = _nginx_test(_prepare(config, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "nginx.conf"
    broken.write_text((NGINX_DIR / "nginx.conf").read_text().replace("grpc_pass grpc://", "grpc_pass bogus://"))
    assert _nginx_test(broken).returncode != 0


def _directives(text: str) -> list[list[str]]:
    text = re.sub(r"#[^\n]*", "", text)
    return [shlex.split(d) for d in re.split(r"[;{}]", text) if d.strip()]


@pytest.mark.parametrize("config", NGINX_CONFIGS, ids=lambda p: p.name)
def test_nginx_config_content(config: Path) -> None:
    text = config.read_text()
    directives = [d for d in _directives(text) if d]
    by_name: dict[str, list[list[str]]] = {}
    for d in directives:
        by_name.setdefault(d[0], []).append(d[1:])
    upstream = re.search(r"upstream vgi_flight_replicas \{(.*?)\}", text, re.S)
    assert upstream, "no upstream vgi_flight_replicas"
    assert len(re.findall(r"^\s*server\s+\S+", upstream.group(1), re.M)) == 3
    tls = "ssl" in " ".join(" ".join(a) for a in by_name["listen"])
    scheme = "grpcs" if tls else "grpc"
    assert [f"{scheme}://vgi_flight_replicas"] in by_name["grpc_pass"]
    assert any("http2" in args for args in by_name["listen"])
    assert by_name["client_max_body_size"] == [["0"]]
    for timeout in ("grpc_read_timeout", "grpc_send_timeout"):
        assert _seconds(by_name[timeout][0][0]) >= 600, f"{timeout} too short for long streams"
    assert by_name["pid"][0][0].startswith("/tmp/")
    assert all(
        args[0].startswith("/tmp/") for name, args in by_name.items() if name.endswith("_temp_path") for args in args
    )
    if tls:
        for name in ("grpc_ssl_certificate", "grpc_ssl_certificate_key", "grpc_ssl_trusted_certificate"):
            assert name in by_name, f"{config.name}: no {name} (mTLS to the replicas)"
        assert by_name["grpc_ssl_verify"] == [["on"]]
        assert by_name["ssl_verify_client"] == [["on"]]
        assert ["x-client-cert-identity", "$vgi_client_identity"] in by_name["grpc_set_header"]
        assert "trusted_identity_header" in text
    else:
        # A plaintext proxy must clear the identity header rather than pass a client's through.
        assert ["x-client-cert-identity", ""] in by_name["grpc_set_header"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _running_nginx(config: Path, tmp_path: Path, replica_ports: list[int]) -> Iterator[int]:
    """Run a copy of `config` in the foreground, pointed at `replica_ports`; yield its port."""
    text = config.read_text()
    originals = re.findall(r"server 127\.0\.0\.1:(\d+)", text)
    assert len(originals) == len(replica_ports)
    for original, port in zip(originals, replica_ports, strict=True):
        text = text.replace(f"127.0.0.1:{original} ", f"127.0.0.1:{port} ")
    port = _free_port()
    text = re.sub(r"listen 8815 ", f"listen 127.0.0.1:{port} ", text)
    text = text.replace("/tmp/vgi-flight-nginx", str(tmp_path / "nginx"))
    copy = tmp_path / config.name
    copy.write_text(text)
    log = (tmp_path / "nginx.log").open("w")
    process = subprocess.Popen(
        [_nginx(), "-e", "stderr", "-g", "daemon off;", "-c", str(copy)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (tmp_path / "nginx.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_nginx_balances_calls_and_streams_across_replicas(tmp_path: Path) -> None:
    """The plaintext config really proxies Flight to 3 replicas sharing a token key (calls balanced one by one)."""
    from vgi_flight import RpcServer, connect
    from vgi_flight._demo import DemoService, DemoServiceImpl

    token_key = os.urandom(32)  # shared by all replicas, as deploy/ requires
    ports = [_free_port() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(
                RpcServer(DemoService, DemoServiceImpl(), f"grpc://127.0.0.1:{port}", token_key=token_key)
            )
        proxy = stack.enter_context(_running_nginx(NGINX_DIR / "nginx.conf", tmp_path, ports))
        with connect(DemoService, f"grpc://127.0.0.1:{proxy}") as demo:
            assert [demo.add(a=i, b=1) for i in range(6)] == [1, 2, 3, 4, 5, 6]
            for _ in range(3):  # GetFlightInfo and DoGet go to different replicas round-robin
                session = demo.countdown(start=3)
                assert [b.batch.num_rows for b in session] == [1, 1, 1]
    log = (tmp_path / "nginx.log").read_text()
    for rpc in ("DoAction", "GetFlightInfo", "DoGet"):
        assert f'POST /arrow.flight.protocol.FlightService/{rpc} HTTP/2.0" 200' in log, log


# ------------------------------------------------------------------------------------------ envoy


def _envoy() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY.read_text())
    return config


def test_envoy_listener_is_http2_grpc_with_long_streams() -> None:
    listeners = _envoy()["static_resources"]["listeners"]
    assert len(listeners) == 1
    assert listeners[0]["address"]["socket_address"]["port_value"] == 8815
    (chain,) = listeners[0]["filter_chains"]
    (hcm_filter,) = chain["filters"]
    assert hcm_filter["name"] == "envoy.filters.network.http_connection_manager"
    hcm = hcm_filter["typed_config"]
    assert hcm["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    assert hcm["codec_type"] in ("HTTP2", "AUTO")
    assert _seconds(hcm["stream_idle_timeout"]) >= 600
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
    assert "x-client-cert-identity" in hcm["route_config"]["request_headers_to_remove"]
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    assert routes
    clusters = {c["name"] for c in _envoy()["static_resources"]["clusters"]}
    for route in routes:
        assert route["match"].get("grpc") == {}
        assert route["route"]["timeout"] == "0s", "a route timeout would cut long streams"
        assert route["route"]["cluster"] in clusters


def test_envoy_cluster_speaks_http2_to_replicas() -> None:
    (cluster,) = _envoy()["static_resources"]["clusters"]
    assert cluster["type"] in ("STRICT_DNS", "STATIC")
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["@type"] == "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert "http2_protocol_options" in options["explicit_http_config"]
    endpoints = [
        lb["endpoint"]["address"]["socket_address"]
        for e in cluster["load_assignment"]["endpoints"]
        for lb in e["lb_endpoints"]
    ]
    assert endpoints
    assert all(e["port_value"] == 8815 for e in endpoints)
    if cluster["type"] == "STRICT_DNS":
        headless = _one("Service", "vgi-flight-headless")["metadata"]["name"]
        assert all(e["address"].startswith(headless + ".") for e in endpoints)
    assert cluster["health_checks"]
    assert cluster["load_assignment"]["cluster_name"] == cluster["name"]


# ------------------------------------------------------------------------------------ Containerfile


def _instructions() -> list[tuple[str, str]]:
    logical: list[str] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Containerfile ends inside a continued line"
    result = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _only(keyword: str) -> str:
    values = [rest for kw, rest in _instructions() if kw == keyword]
    assert len(values) == 1, f"expected one {keyword}, found {values}"
    return values[0]


def test_containerfile_base_user_and_port() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.12-slim")
    known = {
        "FROM",
        "ENV",
        "RUN",
        "WORKDIR",
        "COPY",
        "USER",
        "EXPOSE",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    }
    assert {kw for kw, _ in instructions} <= known
    user = _only("USER").split(":")[0]
    assert user not in ("root", "0", "")
    assert _only("EXPOSE") == "8815"
    assert _only("STOPSIGNAL") == "SIGTERM"
    # The uid matches the Deployment's runAsUser, so runAsNonRoot can be verified by the kubelet.
    assert int(user) == _one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_containerfile_installs_the_project() -> None:
    copies = [rest.split() for kw, rest in _instructions() if kw == "COPY"]
    sources = {src for args in copies for src in args[:-1]}
    assert {"pyproject.toml", "vgi_flight"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository (build context is the repo root)"
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources, "pyproject's readme file is needed to build the package"
    assert any(rest.startswith("pip install .") for kw, rest in _instructions() if kw == "RUN")


def test_containerfile_entrypoint_cmd_and_healthcheck() -> None:
    entrypoint = json.loads(_only("ENTRYPOINT"))
    assert entrypoint == ["vgi-flight", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "vgi-flight" in scripts
    cmd = json.loads(_only("CMD"))
    assert cmd == ["vgi_flight._demo:DemoServiceImpl", "--protocol", "vgi_flight._demo:DemoService"]
    _assert_attr_path_exists(cmd[0])
    _assert_attr_path_exists(cmd[2])
    # The path is also importable, the way `vgi-flight serve` will import it.
    assert importlib.util.find_spec(cmd[0].split(":")[0]) is not None
    healthcheck = _only("HEALTHCHECK")
    assert re.search(r"\bCMD\s+vgi-flight health\b", healthcheck)
    assert "grpc://localhost:8815" in healthcheck


# ------------------------------------------------------------------------------------------- docs


def test_deployment_doc_covers_every_file_and_runs_no_python() -> None:
    text = DOC.read_text()
    assert "```python" not in text, "```python blocks are executed by tests/test_docs.py"
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(ROOT)) in text, f"docs/deployment.md does not mention {path.relative_to(ROOT)}"
    for needle in (
        "vgi-flight serve",
        "vgi-flight health",
        "VGI_FLIGHT_TOKEN_KEY_FILE",
        "terminationGracePeriodSeconds",
        "maxUnavailable",
        "client_max_body_size 0",
        "trusted_identity_header",
        "UNAVAILABLE",
        "KeyRing",
    ):
        assert needle in text, f"docs/deployment.md does not mention {needle}"
