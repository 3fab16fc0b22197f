"""Start, check and stop TorchServe for one bundle, bound to 127.0.0.1 with token auth on.

``serve()`` exports the bundle to ONNX if needed, archives it with the handler (model
NAME classifies and, for a bundle with a purifier, model NAME-purify only purifies), writes a config.properties and the metrics
config, starts TorchServe, waits until every served model's workers are READY, publishes the keys and
starts serving.sidecar (key renewal, the Prometheus endpoint). Requests are batched
dynamically (``batch_size`` images at most, waiting up to ``max_batch_delay_ms``). Ports: PORT
inference, PORT+1 management (loopback), PORT+2 metrics (the sidecar), PORT+3 TorchServe's own
metrics (loopback, merged into PORT+2).
A model that fails to load stops the server and raises PurifierError with the log's reason:
a server is never left answering 503. State (model store, config, logs, key file) lives in
$PURIFIER_SERVE_DIR, default ~/.cache/purifier/serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import requests
import yaml

from purifier.bundle import Bundle, load_bundle
from purifier.errors import PurifierError
from serving.server_state import (
    PURIFY_SUFFIX,
    served_models,
    SERVER_FILE,
    SHORTEST_KEY_LIFETIME_MIN,
    TOKEN_EXPIRATION_MIN,
    Server,
    bin_path,
    model_ready,
    pid_alive,
    publish_keys,
    read_torchserve_keys,
    running_server,
    server_env,
    state_dir,
    stay_until_signalled,
    stop,
    stop_sidecar,
)
from serving.torchserve_handler import LOAD_FAILED

HANDLER = Path(__file__).with_name("torchserve_handler.py")
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def model_name(bundle: Bundle) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", bundle.name):
        raise PurifierError(f"bundle name {bundle.name!r} is not usable in a URL; rename it in bundle.json (letters, digits, '.', '_', '-')")
    return bundle.name


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Batching:
    """TorchServe's dynamic batching: at most ``batch_size`` requests, waiting up to ``max_batch_delay_ms``."""

    batch_size: int = 32
    max_batch_delay_ms: int = 1  # 0 makes TorchServe wait far longer (132 ms p50 at one client, benchmarks/serve.py)


def build_archive(
    bundle: Bundle, work: Path, seed: int | None = None, mode: str = "classify", batching: Batching = Batching(), handler: Path = HANDLER,
    runtime: str = "onnxruntime", certify: dict | None = None,
) -> Path:
    """Archive the bundle's listed files and the handler as WORK/model-store/MODEL.mar.

    The model-config YAML carries the batching settings and the handler's (``seed``: the random
    transform's seed, null = OS entropy, the only safe choice in production; ``runtime``:
    serving.runtime's engine name; ``mode``:
    classify, or purify for the purify-only model, named NAME-purify).

    torch-model-archiver scratches in $TMPDIR/NAME and deletes that path first, so it runs with
    a private TMPDIR; it is given a staged copy of exactly the files bundle.json lists.
    """
    name = model_name(bundle) + (PURIFY_SUFFIX if mode == "purify" else "")
    staged, scratch, store = work / "archive-src", work / "archive-tmp", work / "model-store"
    for folder in (staged, scratch, store):
        folder.mkdir(parents=True, exist_ok=True)
    for relative in [*bundle.manifest["files"], "bundle.json"]:
        (staged / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.file(relative), staged / relative)
    model_config = work / "model-config.yaml"
    model_config.write_text(yaml.safe_dump({
        "minWorkers": 1, "maxWorkers": 1, "batchSize": batching.batch_size, "maxBatchDelay": batching.max_batch_delay_ms,
        "handler": {"seed": seed, "mode": mode, "runtime": runtime, "certify": certify or {}},
    }))
    command = [
        bin_path("torch-model-archiver"), "--model-name", name, "--version", "1.0", "--handler", str(handler),
        "--extra-files", str(staged), "--config-file", str(model_config), "--export-path", str(store), "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(scratch)))
    shutil.rmtree(staged)
    if result.returncode != 0:
        raise PurifierError(f"torch-model-archiver failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return store / f"{name}.mar"


@dataclass(frozen=True)
class Access:
    """Token authorisation: keys live ``token_expiration_min`` minutes (renewed before they expire); ``token_auth``
    False only behind a gateway that authenticates every request."""

    token_expiration_min: float = TOKEN_EXPIRATION_MIN
    token_auth: bool = True

    def __post_init__(self) -> None:
        if self.token_expiration_min < SHORTEST_KEY_LIFETIME_MIN:
            raise PurifierError(f"--token-expiration-min must be at least {SHORTEST_KEY_LIFETIME_MIN:g}, got {self.token_expiration_min:g}")


def write_config(directory: Path, store: Path, port: int, host: str = "127.0.0.1", access: Access = Access()) -> Path:
    """TorchServe settings: inference on ``host``, management and TorchServe's own metrics on loopback
    (the sidecar serves metrics on ``host``), token auth (TorchServe's default), model-management API
    off, archives only from the local store, request and response sizes capped."""
    config = directory / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://{host}:{port}",
        f"management_address=http://127.0.0.1:{port + 1}",
        f"metrics_address=http://127.0.0.1:{port + 3}",
        "metrics_mode=prometheus",
        f"model_store={store}",
        f"token_expiration_min={access.token_expiration_min:g}",  # TorchServe reads a Double
        f"disable_token_authorization={str(not access.token_auth).lower()}",
        "install_py_dep_per_model=false",
        "enable_model_api=false",
        "ts_open_inference_protocol=true",  # /v2/health/live and /v2/health/ready (tritonclient)
        "disable_system_metrics=true",
        "async_logging=true",
        f"allowed_urls=file://{store}/.*",
        f"max_request_size={MAX_REQUEST_BYTES}",
        f"max_response_size={MAX_RESPONSE_BYTES}",
        "",
    ]))
    return config


def _load_failure(log_dir: Path) -> str | None:
    """The reason the handler logged (tagged LOAD_FAILED) if the model failed to load."""
    log = log_dir / "model_log.log"
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if LOAD_FAILED in line:
            return line.split(LOAD_FAILED, 1)[1].strip()
    return None


def serve(
    bundle_path: Path | None = None, port: int = 8080, foreground: bool = False, timeout_s: float = 180.0,
    host: str = "127.0.0.1", seed: int | None = None, batching: Batching = Batching(), handler: Path = HANDLER, runtime: str = "onnxruntime",
    certify: dict | None = None, access: Access = Access(),
) -> Server:
    """Start TorchServe with the bundle and return once its models answer; raise if they cannot load.

    ``host`` is 127.0.0.1 except inside a container, whose own network namespace is the boundary.
    Another ``handler`` (benchmarks compare with a plain one) serves the classify model alone.
    """
    from serving.runtime import parse_runtime  # imports torch: only when starting a server

    parse_runtime(runtime)  # a misspelt engine is refused here, not in the model's worker
    bundle = load_bundle(bundle_path)
    if not (bundle.manifest.get("exports") or {}).get("onnx"):
        from export.onnx import export_bundle

        print(f"bundle {bundle.path} has no ONNX export yet: exporting it first", file=sys.stderr)
        bundle = export_bundle(bundle.path)
    if shutil.which("java") is None:
        raise PurifierError("TorchServe needs Java 17: install it (apt-get install openjdk-17-jre-headless) and retry")
    if pid_alive():
        server = running_server()
        if server is None or server.model != bundle.name or not server.inference_url.endswith(f":{port}") or not model_ready(server):
            raise PurifierError("another TorchServe is already running on this machine; stop it first with 'purifier serve --stop'")
        print("already running:")
        announce(server, bundle)
        return server
    directory = fresh_state(list(range(port, port + 4)), access, "pass --port with four free consecutive ports")
    (directory / "prometheus").mkdir()
    modes = list(served_models(model_name(bundle), bundle.has_purifier).values()) if handler == HANDLER else ["classify"]
    archives = [build_archive(bundle, directory, seed, mode, batching, handler, runtime, certify) for mode in modes]
    store = archives[0].parent
    config = write_config(directory, store, port, host, access)
    command = [
        bin_path("torchserve"), "--start", "--ncs", "--ts-config", str(config), "--model-store", str(store),
        "--models", *(f"{archive.stem}={archive.name}" for archive in archives),
    ]
    if foreground:
        command.append("--foreground")
    with open(directory / "logs" / "torchserve.out", "w") as output:  # its own session: signals reach it only through stop()
        process = subprocess.Popen(command, cwd=directory, env=server_env(directory), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = _wait_until_ready(bundle, tuple(archive.stem for archive in archives), directory, port, timeout_s, process if foreground else None,
                               access.token_auth)
    server = replace(server, sidecar_pid=_start_sidecar(server, directory, host, port, access))
    (directory / SERVER_FILE).write_text(json.dumps(asdict(server)))
    announce(server, bundle)
    if foreground:
        stay_until_signalled(process, "TorchServe")
    return server


def fresh_state(ports: list[int], access: Access, hint: str) -> Path:
    """Before a start: refuse busy ``ports`` (``hint`` says what to pass instead), warn when token authorisation is off,
    and give an empty state directory with logs/ (what is there belongs to a server no longer running)."""
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise PurifierError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use; {hint}")
    if not access.token_auth:
        print("warning: token authorisation is off (--no-token-auth): anyone who reaches the inference port can use it; run it only "
              "behind a gateway that authenticates every request", file=sys.stderr)
    directory = state_dir()
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "logs").mkdir(parents=True)
    return directory


def announce(server: Server, bundle: Bundle) -> None:
    print(f"serving model '{server.model}' from {bundle.path}")
    print(f"  predictions: {server.prediction_url()}  (KServe v2: {server.inference_url}/v2/models/{server.model}/infer)")
    if server.purify_model in server.models:
        print(f"  purify only: {server.prediction_url(server.purify_model)}")
    print(f"  metrics:     {server.metrics_url}/metrics")
    print(f"  logs:        {state_dir() / 'logs'}")
    # the bundled example images are 28×28 Fashion-MNIST; for a bundle of other images the user names one of theirs
    print(f"  try:         {server.curl_line() if bundle.input_shape == (1, 28, 28) else server.curl_line(Path('YOUR_IMAGE.png'))}")
    print("  stop with:   purifier serve --stop", flush=True)


def _start_sidecar(server: Server, directory: Path, host: str, port: int, access: Access) -> int:
    """Start serving.sidecar detached (it outlives this command and exits with TorchServe); its pid."""
    command = [
        sys.executable, "-m", "serving.sidecar", str(directory), "--metrics-host", host, "--metrics-port", str(port + 2),
        "--torchserve-metrics", f"http://127.0.0.1:{port + 3}", "--management", server.management_url, "--models", ",".join(server.models),
        "--key-lifetime-min", str(access.token_expiration_min), *([] if access.token_auth else ["--no-token-auth"]),
    ]
    with open(directory / "logs" / "sidecar.log", "a") as log:
        sidecar = subprocess.Popen(command, cwd=directory, env=server_env(directory), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sidecar.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=2).status_code == 200:
                return sidecar.pid
        except requests.RequestException:
            time.sleep(0.1)
    stop_sidecar(sidecar.pid)
    stop()
    raise PurifierError(f"the metrics sidecar did not start; see {directory / 'logs' / 'sidecar.log'}")


def _wait_until_ready(bundle: Bundle, models: tuple[str, ...], directory: Path, port: int, timeout_s: float, foreground: subprocess.Popen | None,
                      token_auth: bool) -> Server:
    deadline = time.monotonic() + timeout_s
    server = Server(model_name(bundle), models, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}",
                    token_auth)
    published = not token_auth
    while time.monotonic() < deadline:
        keys = None if published else read_torchserve_keys(directory)
        if keys is not None:
            publish_keys(directory, keys)
            published = True
        if published and model_ready(server, directory):
            return server
        failure = _load_failure(directory / "logs")
        if failure is not None or (foreground is not None and foreground.poll() is not None):
            stop()
            raise PurifierError(f"model '{bundle.name}' failed to load: {failure or 'TorchServe exited'}; see {directory / 'logs'}")
        time.sleep(0.5)
    stop()
    raise PurifierError(f"model '{bundle.name}' did not become ready within {timeout_s:.0f}s; see {directory / 'logs'} (raise --timeout on a slow machine)")


