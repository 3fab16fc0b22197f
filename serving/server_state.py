"""The state of this machine's purifier server, readable without torch: where it keeps its files,
the record of the running server, and ``status`` / ``stop`` (what a container's health check and
``purifier serve --status | --key | --stop`` call every few seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from purifier.errors import PurifierError

EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "fashion-mnist" / "sneaker.png"
SERVER_FILE = "server.json"
PURIFY_SUFFIX = "-purify"


def state_dir() -> Path:
    return Path(os.environ.get("PURIFIER_SERVE_DIR", Path.home() / ".cache" / "purifier" / "serve"))


@dataclass(frozen=True)
class Server:
    """Addresses and credentials of a running server."""

    model: str
    models: tuple[str, ...]
    inference_url: str
    management_url: str
    metrics_url: str
    inference_key: str
    management_key: str

    def prediction_url(self, model: str | None = None) -> str:
        return f"{self.inference_url}/predictions/{model or self.model}"

    @property
    def purify_model(self) -> str:
        return self.model + PURIFY_SUFFIX

    def curl_line(self, image: Path = EXAMPLE_IMAGE) -> str:
        return f'curl -H "Authorization: Bearer {self.inference_key}" -T {image} {self.prediction_url()}'


def bin_path(name: str) -> str:
    """A console script of this environment (TorchServe must run on the same interpreter)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def server_env(directory: Path) -> dict[str, str]:
    env = dict(os.environ, LOG_LOCATION=str(directory / "logs"), METRICS_LOCATION=str(directory / "logs"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def read_keys(directory: Path) -> tuple[str, str] | None:
    try:
        keys = json.loads((directory / "key_file.json").read_text())
        return keys["inference"]["key"], keys["management"]["key"]
    except (OSError, ValueError, KeyError):
        return None


def pid_alive() -> bool:
    """Whether TorchServe's global pid file names a live TorchServe frontend."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        return "org.pytorch.serve.ModelServer" in psutil.Process(int(pid_file.read_text().split()[0])).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def model_ready(server: Server) -> bool:
    """Whether every served model (classify and purify-only) has a READY worker."""
    for model in server.models:
        try:
            response = requests.get(f"{server.management_url}/models/{model}", headers={"Authorization": f"Bearer {server.management_key}"}, timeout=5)
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
        return Server(**json.loads((state_dir() / SERVER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def status() -> Server:
    """The running server if its model has a READY worker; PurifierError otherwise."""
    server = running_server()
    if server is None or not pid_alive():
        raise PurifierError("not running: no purifier server is running on this machine; start one with 'purifier serve'")
    if not model_ready(server):
        raise PurifierError(f"model '{server.model}' is not ready at {server.management_url}; see {state_dir() / 'logs'}")
    return server


def stop() -> None:
    """Stop the TorchServe of this machine (there is only one: TorchServe keeps a global pid file)."""
    result = subprocess.run([bin_path("torchserve"), "--stop"], capture_output=True, text=True, env=server_env(state_dir()))
    deadline = time.monotonic() + 30
    while pid_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not pid_alive():
        (state_dir() / SERVER_FILE).unlink(missing_ok=True)
    print(result.stdout.strip() or result.stderr.strip())
