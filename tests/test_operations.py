"""Running the server for longer than its keys live, and without keys behind a gateway: the real
TorchServe and its sidecar on 127.0.0.1, started with ``purifier serve`` as an operator would."""

from __future__ import annotations

import os
import stat
import time

import requests

from purifier.images import encode_png
from serving.server_state import keyed_request, read_keys
from tests.serving_helpers import PORT, needs_java
from tests.serving_helpers import serve as _serve

pytestmark = needs_java
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
