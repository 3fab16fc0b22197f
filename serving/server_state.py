"""The state of this machine's purifier server, readable without torch: where it keeps its files,
the record of the running server, its keys, and ``status`` / ``stop`` (what a container's health
check and ``purifier serve --status | --key | --stop`` call every few seconds).

Keys: TorchServe writes its keys to ``key_file.json`` in place (a reader can catch it half
written) and replaces a key the moment it is renewed. The server publishes the inference and
management keys to ``keys.json`` instead, atomically (mode 0600), at start and after every renewal
(serving.sidecar). A client reads ``keys.json`` (or ``purifier serve --key``) and, if a request
is refused for its key, reads it again and retries once: across renewals it never fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import requests

from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_json

EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "fashion-mnist" / "sneaker.png"
SERVER_FILE = "server.json"
KEY_FILE = "keys.json"
TORCHSERVE_KEY_FILE = "key_file.json"
PURIFY_SUFFIX = "-purify"
KEY_REFUSED = "Token Authorization failed"
TOKEN_EXPIRATION_MIN = 24 * 60  # default key lifetime; renewed before it ends


def state_dir() -> Path:
    return Path(os.environ.get("PURIFIER_SERVE_DIR", Path.home() / ".cache" / "purifier" / "serve"))


@dataclass(frozen=True)
class Server:
    """Addresses of a running server; ``token_auth`` False when it runs without keys (behind a gateway)."""

    model: str
    models: tuple[str, ...]
    inference_url: str
    management_url: str
    metrics_url: str
    token_auth: bool = True
    sidecar_pid: int | None = None

    def prediction_url(self, model: str | None = None) -> str:
        return f"{self.inference_url}/predictions/{model or self.model}"

    @property
    def purify_model(self) -> str:
        return self.model + PURIFY_SUFFIX

    def curl_line(self, image: Path = EXAMPLE_IMAGE) -> str:
        auth = '-H "Authorization: Bearer $(purifier serve --key)" ' if self.token_auth else ""
        return f"curl {auth}-T {image} {self.prediction_url()}"


@dataclass(frozen=True)
class Keys:
    """The server's keys and when they expire (seconds since the epoch); ``api`` renews the other two."""

    inference: str
    management: str
    api: str
    inference_expires: float
    management_expires: float

    def for_kind(self, kind: str) -> str:
        return self.inference if kind == "inference" else self.management


def bin_path(name: str) -> str:
    """A console script of this environment (TorchServe must run on the same interpreter)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def server_env(directory: Path) -> dict[str, str]:
    """The environment of TorchServe and its workers: logs in the state directory, and the folder where the
    workers' Prometheus metrics live (prometheus_client's multiprocess mode, read by serving.sidecar)."""
    env = dict(os.environ, LOG_LOCATION=str(directory / "logs"), METRICS_LOCATION=str(directory / "logs"),
               PROMETHEUS_MULTIPROC_DIR=str(directory / "prometheus"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def read_torchserve_keys(directory: Path) -> Keys | None:
    """TorchServe's own key file, or None while it is missing or half written."""
    try:
        raw = json.loads((directory / TORCHSERVE_KEY_FILE).read_text())
        return Keys(raw["inference"]["key"], raw["management"]["key"], raw["API"]["key"],
                    _epoch(raw["inference"]["expiration time"]), _epoch(raw["management"]["expiration time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish_keys(directory: Path, keys: Keys) -> None:
    """Write the keys clients read (``keys.json``, mode 0600) in one atomic step."""
    atomic_write_json(directory / KEY_FILE, {
        "inference": {"key": keys.inference, "expires": keys.inference_expires},
        "management": {"key": keys.management, "expires": keys.management_expires},
        "api": {"key": keys.api},
    }, mode=0o600)


def read_keys(directory: Path | None = None) -> Keys | None:
    """The published keys, or None when there are none (not started, or token authorisation off)."""
    try:
        raw = json.loads(((directory or state_dir()) / KEY_FILE).read_text())
        return Keys(raw["inference"]["key"], raw["management"]["key"], raw["api"]["key"],
                    raw["inference"]["expires"], raw["management"]["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keyed_request(method: str, url: str, kind: str, directory: Path | None = None, **options) -> requests.Response:
    """An HTTP request with the current ``kind`` key (inference | management); refused for its key, the keys are
    read again and the request sent once more. Without published keys it is sent without one."""
    for attempt in range(2):
        keys = read_keys(directory)
        headers = dict(options.pop("headers", None) or {})
        if keys is not None:
            headers["Authorization"] = f"Bearer {keys.for_kind(kind)}"
        response = requests.request(method, url, headers=headers, **options)
        if not (response.status_code in (400, 401) and KEY_REFUSED in response.text) or attempt:
            return response
        options["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
    return response


def pid_alive() -> bool:
    """Whether TorchServe's global pid file names a live TorchServe frontend."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        return "org.pytorch.serve.ModelServer" in psutil.Process(int(pid_file.read_text().split()[0])).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def model_ready(server: Server, directory: Path | None = None) -> bool:
    """Whether every served model (classify and purify-only) has a READY worker."""
    for model in server.models:
        try:
            response = keyed_request("GET", f"{server.management_url}/models/{model}", "management", directory, timeout=5)
        except requests.RequestException:
            return False
        if response.status_code != 200:
            return False
        workers = [w for entry in response.json() for w in entry.get("workers", [])]
        if not any(worker.get("status") == "READY" for worker in workers):
            return False
    return True


def running_server() -> Server | None:
    """The server recorded in the state directory by the last successful start, if any."""
    try:
        record = json.loads((state_dir() / SERVER_FILE).read_text())
        return Server(**{**record, "models": tuple(record["models"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def status() -> Server:
    """The running server if its model has a READY worker; PurifierError otherwise."""
    server = running_server()
    if server is None or not pid_alive():
        raise PurifierError("not running: no purifier server is running on this machine; start one with 'purifier serve'")
    if not model_ready(server):
        raise PurifierError(f"model '{server.model}' is not ready at {server.management_url}; see {state_dir() / 'logs'}")
    return server


def inference_key() -> str:
    """The running server's current inference key (``purifier serve --key``)."""
    server = status()
    keys = read_keys()
    if not server.token_auth or keys is None:
        raise PurifierError("this server runs without token authorisation (--no-token-auth): requests need no key")
    return keys.inference


def stop() -> None:
    """Stop the TorchServe of this machine (there is only one: TorchServe keeps a global pid file) and its sidecar."""
    server = running_server()
    result = subprocess.run([bin_path("torchserve"), "--stop"], capture_output=True, text=True, env=server_env(state_dir()))
    deadline = time.monotonic() + 30
    while pid_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if server is not None and server.sidecar_pid:
        stop_sidecar(server.sidecar_pid)
    if not pid_alive():
        (state_dir() / SERVER_FILE).unlink(missing_ok=True)
    print(result.stdout.strip() or result.stderr.strip())


def stop_sidecar(pid: int) -> None:
    """SIGTERM the sidecar process ``pid`` if it still is one, and wait for it (bounded)."""
    try:
        process = psutil.Process(pid)
        if "serving.sidecar" not in " ".join(process.cmdline()):
            return
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.Error:
        pass
