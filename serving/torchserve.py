"""Start, check and stop TorchServe for one bundle, bound to 127.0.0.1 with token auth on.

``serve()`` exports the bundle to ONNX if needed, archives it with the handler into a .mar,
writes a config.properties, starts TorchServe and waits until the model's worker is READY.
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
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests
import yaml

from purifier.bundle import Bundle, load_bundle
from purifier.errors import PurifierError
from serving.torchserve_handler import LOAD_FAILED

HANDLER = Path(__file__).with_name("torchserve_handler.py")
EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "fashion-mnist" / "sneaker.png"
TOKEN_EXPIRATION_MIN = 24 * 60
SERVER_FILE = "server.json"


def state_dir() -> Path:
    return Path(os.environ.get("PURIFIER_SERVE_DIR", Path.home() / ".cache" / "purifier" / "serve"))


@dataclass(frozen=True)
class Server:
    """Addresses and credentials of a running server."""

    model: str
    inference_url: str
    management_url: str
    metrics_url: str
    inference_key: str
    management_key: str

    def prediction_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model}"

    def curl_line(self, image: Path = EXAMPLE_IMAGE) -> str:
        return f'curl -H "Authorization: Bearer {self.inference_key}" -T {image} {self.prediction_url()}'


def _model_name(bundle: Bundle) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", bundle.name):
        raise PurifierError(f"bundle name {bundle.name!r} is not usable in a URL; rename it in bundle.json (letters, digits, '.', '_', '-')")
    return bundle.name


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bin(name: str) -> str:
    """A console script of this environment (TorchServe must run on the same interpreter)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def build_archive(bundle: Bundle, work: Path, seed: int | None = None) -> Path:
    """Archive the bundle's listed files and the handler as WORK/model-store/NAME.mar.

    The model-config YAML carries the handler's settings (``seed``: the random transform's
    seed; null = OS entropy, the only safe choice in production).

    torch-model-archiver scratches in $TMPDIR/NAME and deletes that path first, so it runs with
    a private TMPDIR; it is given a staged copy of exactly the files bundle.json lists.
    """
    name = _model_name(bundle)
    staged, scratch, store = work / "archive-src", work / "archive-tmp", work / "model-store"
    for folder in (staged, scratch, store):
        folder.mkdir(parents=True, exist_ok=True)
    for relative in [*bundle.manifest["files"], "bundle.json"]:
        (staged / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.file(relative), staged / relative)
    model_config = work / "model-config.yaml"
    model_config.write_text(yaml.safe_dump({"minWorkers": 1, "maxWorkers": 1, "handler": {"seed": seed}}))
    command = [
        _bin("torch-model-archiver"), "--model-name", name, "--version", "1.0", "--handler", str(HANDLER),
        "--extra-files", str(staged), "--config-file", str(model_config), "--export-path", str(store), "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(scratch)))
    shutil.rmtree(staged)
    if result.returncode != 0:
        raise PurifierError(f"torch-model-archiver failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return store / f"{name}.mar"


def write_config(directory: Path, store: Path, port: int, host: str = "127.0.0.1") -> Path:
    """TorchServe settings: inference and metrics on ``host``, management always on loopback."""
    config = directory / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://{host}:{port}",
        f"management_address=http://127.0.0.1:{port + 1}",
        f"metrics_address=http://{host}:{port + 2}",
        "metrics_mode=prometheus",
        f"model_store={store}",
        f"token_expiration_min={TOKEN_EXPIRATION_MIN}",
        "install_py_dep_per_model=false",
        "enable_model_api=false",
        "disable_system_metrics=true",
        f"allowed_urls=file://{store}/.*",
        "",
    ]))
    return config


def _keys(directory: Path) -> tuple[str, str] | None:
    try:
        keys = json.loads((directory / "key_file.json").read_text())
        return keys["inference"]["key"], keys["management"]["key"]
    except (OSError, ValueError, KeyError):
        return None


def _load_failure(log_dir: Path) -> str | None:
    """The reason the handler logged (tagged LOAD_FAILED) if the model failed to load."""
    log = log_dir / "model_log.log"
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if LOAD_FAILED in line:
            return line.split(LOAD_FAILED, 1)[1].strip()
    return None


def _model_ready(server: Server) -> bool:
    try:
        response = requests.get(
            f"{server.management_url}/models/{server.model}",
            headers={"Authorization": f"Bearer {server.management_key}"}, timeout=5,
        )
    except requests.RequestException:
        return False
    if response.status_code != 200:
        return False
    workers = [w for model in response.json() for w in model.get("workers", [])]
    return any(worker.get("status") == "READY" for worker in workers)


def _pid_alive() -> bool:
    """Whether TorchServe's global pid file names a live TorchServe frontend."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        return "org.pytorch.serve.ModelServer" in psutil.Process(int(pid_file.read_text().split()[0])).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def _env(directory: Path) -> dict[str, str]:
    env = dict(os.environ, LOG_LOCATION=str(directory / "logs"), METRICS_LOCATION=str(directory / "logs"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def serve(
    bundle_path: Path | None = None, port: int = 8080, foreground: bool = False, timeout_s: float = 180.0,
    host: str = "127.0.0.1", seed: int | None = None,
) -> Server:
    """Start TorchServe with the bundle and return once its model answers; raise if it cannot load.

    ``host`` is 127.0.0.1 except inside a container, whose own network namespace is the boundary.
    """
    bundle = load_bundle(bundle_path)
    if not (bundle.manifest.get("exports") or {}).get("onnx"):
        from export.onnx import export_bundle

        print(f"bundle {bundle.path} has no ONNX export yet: exporting it first", file=sys.stderr)
        bundle = export_bundle(bundle.path)
    if shutil.which("java") is None:
        raise PurifierError("TorchServe needs Java 17: install it (apt-get install openjdk-17-jre-headless) and retry")
    if _pid_alive():
        server = _running_server()
        if server is None or server.model != bundle.name or not server.inference_url.endswith(f":{port}") or not _model_ready(server):
            raise PurifierError("another TorchServe is already running on this machine; stop it first with 'purifier serve --stop'")
        print("already running:")
        _announce(server, bundle)
        return server
    busy = [p for p in (port, port + 1, port + 2) if not _port_free(p)]
    if busy:
        raise PurifierError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use; pass --port with three free consecutive ports")
    directory = state_dir()
    if directory.exists():
        shutil.rmtree(directory)  # state of a server that is no longer running
    (directory / "logs").mkdir(parents=True)
    archive = build_archive(bundle, directory, seed)
    store = archive.parent
    config = write_config(directory, store, port, host)
    command = [
        _bin("torchserve"), "--start", "--ncs", "--ts-config", str(config), "--model-store", str(store),
        "--models", f"{_model_name(bundle)}={archive.name}",
    ]
    if foreground:
        command.append("--foreground")
    with open(directory / "logs" / "torchserve.out", "w") as output:
        process = subprocess.Popen(command, cwd=directory, env=_env(directory), stdout=output, stderr=subprocess.STDOUT, start_new_session=not foreground)
    server = _wait_until_ready(bundle, directory, port, timeout_s, process if foreground else None)
    (directory / SERVER_FILE).write_text(json.dumps(asdict(server)))
    _announce(server, bundle)
    if foreground:
        process.wait()
    return server


def _announce(server: Server, bundle: Bundle) -> None:
    print(f"serving model '{server.model}' from {bundle.path}")
    print(f"  predictions: {server.prediction_url()}")
    print(f"  metrics:     {server.metrics_url}/metrics")
    print(f"  logs:        {state_dir() / 'logs'}")
    print(f"  try:         {server.curl_line()}")
    print("  stop with:   purifier serve --stop", flush=True)


def _wait_until_ready(bundle: Bundle, directory: Path, port: int, timeout_s: float, foreground: subprocess.Popen | None) -> Server:
    deadline = time.monotonic() + timeout_s
    server = None
    while time.monotonic() < deadline:
        keys = _keys(directory)
        if keys and server is None:
            server = Server(
                _model_name(bundle), f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}",
                f"http://127.0.0.1:{port + 2}", *keys,
            )
        if server is not None and _model_ready(server):
            return server
        failure = _load_failure(directory / "logs")
        if failure is not None or (foreground is not None and foreground.poll() is not None):
            stop()
            raise PurifierError(f"model '{bundle.name}' failed to load: {failure or 'TorchServe exited'}; see {directory / 'logs'}")
        time.sleep(0.5)
    stop()
    raise PurifierError(f"model '{bundle.name}' did not become ready within {timeout_s:.0f}s; see {directory / 'logs'} (raise --timeout on a slow machine)")


def _running_server() -> Server | None:
    """The server recorded in the state directory by the last successful start, if any."""
    try:
        return Server(**json.loads((state_dir() / SERVER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def status() -> Server:
    """The running server if its model has a READY worker; PurifierError otherwise."""
    server = _running_server()
    if server is None:
        raise PurifierError(f"no server started from {state_dir()}; start one with 'purifier serve'")
    if not _model_ready(server):
        raise PurifierError(f"model '{server.model}' is not ready at {server.management_url}; see {state_dir() / 'logs'}")
    return server


def stop() -> None:
    """Stop the TorchServe of this machine (there is only one: TorchServe keeps a global pid file)."""
    result = subprocess.run([_bin("torchserve"), "--stop"], capture_output=True, text=True, env=_env(state_dir()))
    deadline = time.monotonic() + 30
    while _pid_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    print(result.stdout.strip() or result.stderr.strip())
