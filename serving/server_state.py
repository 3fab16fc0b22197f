"""The state of this machine's purifier server, readable without torch: where it keeps its files,
the record of the running server, its keys, and ``status`` / ``stop`` (what a container's health
check and ``purifier serve --status | --key | --stop`` call every few seconds). Stopping drains first: it
waits until no request is queued or in a handler, then stops TorchServe.

Keys: TorchServe writes its keys to ``key_file.json`` in place (a reader can catch it half
written) and replaces a key the moment it is renewed. The server publishes the inference and
management keys to ``keys.json`` instead, atomically (mode 0600), at start and after every renewal
(serving.sidecar). A client reads ``keys.json`` (or ``purifier serve --key``) and, if a request
is refused for its key, reads it again until it holds a new key (milliseconds after a renewal)
and retries once: across renewals it never fails (``keyed_request``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import requests
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from purifier.assets import EXAMPLE_IMAGES
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_json

EXAMPLE_IMAGE = EXAMPLE_IMAGES / "sneaker.png"
SERVER_FILE = "server.json"
KEY_FILE = "keys.json"
TORCHSERVE_KEY_FILE = "key_file.json"
PURIFY_SUFFIX = "-purify"
KEY_REFUSED = "Token Authorization failed"
TOKEN_EXPIRATION_MIN = 24 * 60  # default key lifetime; renewed before it ends
SHORTEST_KEY_LIFETIME_MIN = 0.25  # 15 s: renewed 3 s before expiry, three polls of the sidecar
DRAIN_TIMEOUT_S = 30.0
KEY_WAIT_S = 5.0  # how long a refused client waits for a renewed key to be published
RENEW_FRACTION = 0.2
RENEW_AT_MOST_S = 600.0


def served_models(name: str, has_purifier: bool) -> dict[str, str]:
    """Model name -> mode for a bundle served as NAME: NAME classifies and, when the bundle has a purifier, NAME-purify purifies."""
    return {name: "classify", **({name + PURIFY_SUFFIX: "purify"} if has_purifier else {})}


def state_dir() -> Path:
    return Path(os.environ.get("PURIFIER_SERVE_DIR", Path.home() / ".cache" / "purifier" / "serve"))


@dataclass(frozen=True)
class Server:
    """Addresses of a running server; ``token_auth`` False when it runs without keys (behind a gateway); ``front``
    torchserve (TorchServe, its management API and serving.sidecar) or kserve (one process, ``pid``)."""

    model: str
    models: tuple[str, ...]
    inference_url: str
    management_url: str
    metrics_url: str
    token_auth: bool = True
    sidecar_pid: int | None = None
    front: str = "torchserve"
    pid: int | None = None

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


def renewal_due(expires: float, lifetime_s: float, now: float) -> bool:
    """Whether a key expiring at ``expires`` should be renewed now: within a fifth of its lifetime (≤ 10 min) of expiry."""
    return expires - now <= min(RENEW_FRACTION * lifetime_s, RENEW_AT_MOST_S)


def read_keys(directory: Path | None = None) -> Keys | None:
    """The published keys, or None when there are none (not started, or token authorisation off)."""
    try:
        raw = json.loads(((directory or state_dir()) / KEY_FILE).read_text())
        return Keys(raw["inference"]["key"], raw["management"]["key"], raw["api"]["key"],
                    raw["inference"]["expires"], raw["management"]["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keyed_request(method: str, url: str, kind: str, directory: Path | None = None, **options) -> requests.Response:
    """An HTTP request with the current ``kind`` key (inference | management). Refused for its key, it waits until
    keys.json holds another key (a renewal: TorchServe switches keys before the new one can be published; at most
    ``KEY_WAIT_S``) and sends the request once more. Without published keys it is sent without one."""
    headers = dict(options.pop("headers", None) or {})
    keys = read_keys(directory)
    for attempt in range(2):
        if keys is not None:
            headers["Authorization"] = f"Bearer {keys.for_kind(kind)}"
        response = requests.request(method, url, headers=headers, **options)
        if attempt or not (response.status_code in (400, 401) and KEY_REFUSED in response.text):
            return response
        keys = _next_keys(directory, keys, kind)
    return response


def _next_keys(directory: Path | None, used: Keys | None, kind: str) -> Keys | None:
    """The published keys once their ``kind`` key differs from the one ``used`` (polled, at most KEY_WAIT_S)."""
    deadline = time.monotonic() + KEY_WAIT_S
    while True:
        keys = read_keys(directory)
        if keys is None or used is None or keys.for_kind(kind) != used.for_kind(kind) or time.monotonic() > deadline:
            return keys
        time.sleep(0.02)


def pid_alive() -> bool:
    """Whether TorchServe's global pid file names a live TorchServe frontend."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        return "org.pytorch.serve.ModelServer" in psutil.Process(int(pid_file.read_text().split()[0])).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def _kserve_process(server: Server) -> psutil.Process | None:
    try:
        process = psutil.Process(server.pid)
        return process if "serving.kserve_front" in " ".join(process.cmdline()) else None
    except (psutil.Error, TypeError, ValueError):
        return None


def alive(server: Server) -> bool:
    """Whether the recorded server's process still runs."""
    return _kserve_process(server) is not None if server.front == "kserve" else pid_alive()


def model_ready(server: Server, directory: Path | None = None) -> bool:
    """Whether every served model (classify and purify-only) is ready: has a READY worker (TorchServe), answers its
    v2 readiness endpoint (KServe)."""
    if server.front == "kserve":
        try:
            return all(keyed_request("GET", f"{server.inference_url}/v2/models/{model}/ready", "inference", directory, timeout=5).status_code == 200
                       for model in server.models)
        except requests.RequestException:
            return False
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
    if server is None or not alive(server):
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


def worker_metrics(directory: Path | None = None) -> MultiProcessCollector:
    """The handler workers' metrics (prometheus_client multiprocess files), with those of dead workers' live gauges
    forgotten first (a killed worker must not count as busy forever)."""
    folder = (directory or state_dir()) / "prometheus"
    for file in folder.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        if not psutil.pid_exists(pid):
            mark_process_dead(pid, str(folder))
    return MultiProcessCollector(None, path=str(folder))


def in_flight(server: Server, directory: Path | None = None) -> int:
    """Requests queued in TorchServe or being handled by a worker now."""
    queued = 0
    for model in server.models:
        response = keyed_request("GET", f"{server.management_url}/models/{model}", "management", directory, timeout=5)
        if response.status_code == 200:
            queued += sum(entry.get("jobQueueStatus", {}).get("pendingRequests", 0) for entry in response.json())
    handled = sum(sample.value for family in worker_metrics(directory).collect() if family.name == "purifier_inflight_requests"
                  for sample in family.samples)
    return queued + int(handled)


def drain(server: Server, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Wait until no request is queued or in a handler on two polls in a row (bounded); whether that happened."""
    deadline, idle = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        try:
            idle = idle + 1 if in_flight(server) == 0 else 0
        except requests.RequestException:
            return False
        if idle >= 2:
            return True
        time.sleep(0.05)
    return False


def stop(drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Stop the TorchServe of this machine (there is only one: TorchServe keeps a global pid file) and its sidecar,
    after the requests it is working on are answered (at most ``drain_timeout_s`` seconds)."""
    server = running_server()
    if server is not None and server.front == "kserve":
        _stop_kserve(server, drain_timeout_s)
        return
    if server is not None and pid_alive() and not drain(server, drain_timeout_s):
        print(f"requests were still in flight after {drain_timeout_s:g} s; stopping anyway", file=sys.stderr)
    result = subprocess.run([bin_path("torchserve"), "--stop"], capture_output=True, text=True, env=server_env(state_dir()))
    deadline = time.monotonic() + 30
    while pid_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if server is not None and server.sidecar_pid:
        stop_sidecar(server.sidecar_pid)
    if not pid_alive():
        (state_dir() / SERVER_FILE).unlink(missing_ok=True)
    print(result.stdout.strip() or result.stderr.strip())


def stay_until_signalled(process: subprocess.Popen, name: str) -> None:
    """Foreground (containers): on SIGTERM or SIGINT stop gracefully (``stop``: in-flight requests are answered) and
    return, so the command exits 0; if ``process`` (the server ``name``) dies on its own, raise."""
    signalled = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: signalled.set())
    while not signalled.wait(0.5):
        if process.poll() is not None:
            raise PurifierError(f"{name} exited with status {process.returncode}; see {state_dir() / 'logs'}")
    print("stopping: draining in-flight requests", flush=True)
    stop()


def _stop_kserve(server: Server, drain_timeout_s: float) -> None:
    """SIGTERM the KServe front (uvicorn answers what is in flight, then it exits) and wait for it."""
    process = _kserve_process(server)
    if process is not None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=drain_timeout_s + 30)
        except psutil.TimeoutExpired:
            process.kill()
    (state_dir() / SERVER_FILE).unlink(missing_ok=True)
    print("the KServe front has stopped.")


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
