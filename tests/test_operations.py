"""Running the server for longer than its keys live, without keys behind a gateway, and stopping it under
load: the real TorchServe and its sidecar on 127.0.0.1, started with ``purifier serve`` as an operator would."""

from __future__ import annotations

import importlib.util
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from purifier.images import encode_png
from serving.server_state import keyed_request, pid_alive, read_keys
from tests.serving_helpers import PORT, needs_java
from tests.serving_helpers import serve as _serve

pytestmark = needs_java
needs_kserve = pytest.mark.skipif(importlib.util.find_spec("kserve") is None, reason="the kserve extra is not installed (scripts/bootstrap.sh test installs it)")
URL = f"http://127.0.0.1:{PORT}/predictions/fmnist-default"


def test_keys_are_renewed_before_they_expire_and_a_rereading_client_never_fails(tmp_path, fmnist_test):
    """Keys that live one minute: for 75 s (past the first keys' expiry) a client reading keys.json before each request,
    and once more if refused, gets only 200s; the keys changed, the management key too (status still answers)."""
    started = _serve(["--token-expiration-min", "1"], tmp_path)
    state = tmp_path / "serve"
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        first = read_keys(state)
        assert stat.S_IMODE(os.stat(state / "keys.json").st_mode) == 0o600
        png = encode_png(fmnist_test.images[0])
        statuses, deadline = [], time.monotonic() + 75
        while time.monotonic() < deadline:
            statuses.append(keyed_request("POST", URL, "inference", state, data=png, timeout=30).status_code)
            time.sleep(0.2)
        assert first.inference_expires < time.time(), "the test did not outlive the first keys"
        assert set(statuses) == {200}, {code: statuses.count(code) for code in set(statuses)}
        now = read_keys(state)
        assert now.inference != first.inference and now.management != first.management and now.inference_expires > time.time()
        refused = requests.post(URL, data=png, headers={"Authorization": f"Bearer {first.inference}"}, timeout=30)
        assert refused.status_code in (400, 401), "an expired key was accepted"
        assert _serve(["--status"], tmp_path).returncode == 0
        assert "renewed the inference key" in (state / "logs" / "sidecar.log").read_text()
    finally:
        _serve(["--stop"], tmp_path)


def test_without_token_auth_requests_need_no_key_and_the_operator_is_warned(tmp_path, fmnist_test):
    started = _serve(["--no-token-auth"], tmp_path)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "warning: token authorisation is off" in started.stderr
        assert requests.post(URL, data=encode_png(fmnist_test.images[0]), timeout=30).status_code == 200
        key = _serve(["--key"], tmp_path)
        assert key.returncode == 2 and "without token authorisation" in key.stderr
        assert _serve(["--status"], tmp_path).returncode == 0
    finally:
        _serve(["--stop"], tmp_path)


@pytest.mark.parametrize("front", ["torchserve", pytest.param("kserve", marks=needs_kserve)])
def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path, fmnist_test, front):
    """`purifier serve --foreground` (a container's main process) under 8 clients sending 256-image requests: SIGTERM
    lets every request already sent finish with a 200, then the server stops and the command exits 0."""
    env = {**os.environ, "PURIFIER_SERVE_DIR": str(tmp_path / "serve")}
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--foreground", "--front", front, "--port", str(PORT)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while _serve(["--status"], tmp_path).returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
            time.sleep(1)
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [256, 28, 28, 1],
                            "data": fmnist_test.images[:256].reshape(-1).tolist()}]}
        v2 = f"http://127.0.0.1:{PORT}/v2/models/fmnist-default/infer"
        stop_sending, sent = threading.Event(), []

        def client() -> None:
            while not stop_sending.is_set():
                began = time.monotonic()
                try:
                    status = keyed_request("POST", v2, "inference", tmp_path / "serve", json=body, timeout=120).status_code
                except requests.RequestException as error:
                    status = type(error).__name__
                sent.append((began, status))

        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:
            thread.start()
        time.sleep(4)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stop_sending.set()
        assert process.wait(timeout=120) == 0, process.stdout.read()
        for thread in clients:
            thread.join(timeout=120)
        before = [status for began, status in sent if began < signalled]
        assert len(before) >= 8 and set(before) == {200}, {code: before.count(code) for code in set(before)}
        assert "draining in-flight requests" in process.stdout.read() and not pid_alive()
        assert "not running" in _serve(["--status"], tmp_path).stderr
    finally:
        if process.poll() is None:
            process.kill()
        _serve(["--stop"], tmp_path)
