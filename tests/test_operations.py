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
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from purifier.images import encode_png
from serving.server_state import (
    KEY_REFUSED,
    Keys,
    keyed_request,
    pid_alive,
    publish_keys,
    read_keys,
)
from tests.serving_helpers import PORT, needs_java
from tests.serving_helpers import serve as _serve

pytestmark = needs_java
needs_kserve = pytest.mark.skipif(importlib.util.find_spec("kserve") is None, reason="the kserve extra is not installed (scripts/bootstrap.sh test installs it)")
URL = f"http://127.0.0.1:{PORT}/predictions/fmnist-default"
SENT_S = 1.0  # a 256-image request begun this long before SIGTERM has surely been sent (it takes tens of ms on loopback)


def test_keys_are_renewed_before_they_expire_and_a_rereading_client_never_fails(tmp_path, fmnist_test):
    """Keys that live 15 s, the shortest allowed: for 25 s (past the first keys' expiry) 4 clients without pause, each
    reading keys.json before a request and waiting for a new key when refused (keyed_request), get only 200s; the keys
    changed, the management key too (status still answers)."""
    too_short = _serve(["--token-expiration-min", "0.1"], tmp_path)
    assert too_short.returncode == 2 and "--token-expiration-min must be at least 0.25, got 0.1" in too_short.stderr, too_short.stderr
    started = _serve(["--token-expiration-min", "0.25"], tmp_path)
    state = tmp_path / "serve"
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        first = read_keys(state)
        assert stat.S_IMODE(os.stat(state / "keys.json").st_mode) == 0o600
        png = encode_png(fmnist_test.images[0])
        deadline = time.monotonic() + 25

        def client() -> list:
            statuses = []
            while time.monotonic() < deadline:
                statuses.append(keyed_request("POST", URL, "inference", state, data=png, timeout=30).status_code)
            return statuses

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = [status for result in pool.map(lambda _: client(), range(4)) for status in result]
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
    lets every request already sent finish with a 200, then the server stops and the command exits 0. "Already sent":
    begun at least SENT_S before the signal; one begun later may still be connecting when the listener closes, and is
    refused, as a request sent after the signal must be."""
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
        before = [status for began, status in sent if began < signalled - SENT_S]
        late = [(round(signalled - began, 3), status) for began, status in sent if status != 200]
        assert len(before) >= 8 and set(before) == {200}, f"{ {code: before.count(code) for code in set(before)} }; not 200, s before the signal: {late}"
        assert "draining in-flight requests" in process.stdout.read() and not pid_alive()
        assert "not running" in _serve(["--status"], tmp_path).stderr
    finally:
        if process.poll() is None:
            process.kill()
        _serve(["--stop"], tmp_path)


def test_a_refused_client_waits_for_the_renewed_key_to_be_published(tmp_path):
    """The race a renewal opens: the server already refuses key A while keys.json still says A; B is published 0.2 s
    later. keyed_request waits for B instead of retrying at once with A (a local HTTP server plays the renewed server)."""
    publish_keys(tmp_path, Keys("A", "M", "api", time.time() + 60, time.time() + 60))
    published = threading.Event()

    class Renewed(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            accepted = self.headers.get("Authorization") == "Bearer B"
            if not accepted and not published.is_set():
                threading.Timer(0.2, lambda: (publish_keys(tmp_path, Keys("B", "M", "api", time.time() + 60, time.time() + 60)),
                                              published.set())).start()
            body = b"ok" if accepted else f'{{"message": "{KEY_REFUSED}"}}'.encode()
            self.send_response(200 if accepted else 400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Renewed) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        began = time.monotonic()
        response = keyed_request("GET", f"http://127.0.0.1:{httpd.server_port}/", "inference", tmp_path, timeout=10)
        httpd.shutdown()
    assert response.status_code == 200 and time.monotonic() - began >= 0.2
