"""The real TorchServe on 127.0.0.1 with the default bundle: real PNGs in, right labels out.

The module starts one server with ``purifier serve`` as a user would and stops it at the end
(TorchServe keeps a machine-wide pid file, so only one runs at a time; failures to start are
tested in test_serving_failures.py). Request loops are bounded.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from purifier.bundle import DEFAULT_BUNDLE
from purifier.images import encode_png
from serving.service import PurificationService

from tests.serving_helpers import PORT, needs_java, serve as _serve

pytestmark = needs_java


FIRST = 100
DEFAULT_CLASSES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, fmnist_test):
    """The default model served with a fixed transform seed; the first 100 test images posted first."""
    state = tmp_path_factory.mktemp("server")
    started = _serve(["--seed", "0"], state)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        keys = json.loads((state / "serve" / "key_file.json").read_text())
        url = f"http://127.0.0.1:{PORT}/predictions/fmnist-default"
        headers = {"Authorization": f"Bearer {keys['inference']['key']}"}
        first = [requests.post(url, data=encode_png(image), headers=headers, timeout=30) for image in fmnist_test.images[:FIRST]]
        yield {"url": url, "key": keys["inference"]["key"], "stdout": started.stdout, "state": state, "first": first}
    finally:
        _serve(["--stop"], state)


def test_default_bundle_classifies_real_fashion_mnist_pngs(server, fmnist_test):
    for response in server["first"]:
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "index", "probabilities", "purification_changed_prediction"}
        assert body["label"] == fmnist_test.class_names[body["index"]]
    correct = sum(r.json()["index"] == label for r, label in zip(server["first"], fmnist_test.labels[:FIRST]))
    # The default pipeline's clean accuracy is 87.9% on all 10k test images (bundle.json); the
    # bare classifier's is 92.7%. 85% over these 100 leaves room for sampling, not for a broken server.
    assert correct >= 0.85 * FIRST, f"{correct}/{FIRST} right"


def test_server_answers_exactly_as_the_offline_pipeline(server, fmnist_test):
    """Same bundle, same seed, one image per request in order: identical predictions."""
    offline = PurificationService.from_bundle(DEFAULT_BUNDLE, seed=0)
    for response, image in zip(server["first"], fmnist_test.images[:FIRST]):
        (expected,), _ = offline.run(image[None])
        assert response.json() == expected.to_dict()


def test_status_and_second_start_report_the_running_model(server):
    status = _serve(["--status"], server["state"])
    assert status.returncode == 0 and "fmnist-default" in status.stdout
    again = _serve([], server["state"])
    assert again.returncode == 0 and "already running" in again.stdout


def test_printed_curl_line_works(server):
    line = next(l.split("try:", 1)[1].strip() for l in server["stdout"].splitlines() if "try:" in l)
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout)["label"] in DEFAULT_CLASSES


def test_bad_image_and_missing_token_are_client_errors(server):
    bad = requests.post(server["url"], data=b"\x89PNG\r\n\x1a\nbroken", headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()
    anonymous = requests.post(server["url"], data=b"x", timeout=30)
    assert anonymous.status_code in (400, 401) and "Token" in anonymous.text
    ok = requests.post(server["url"], data=(DEFAULT_BUNDLE.parent.parent / "examples/fashion-mnist/bag.png").read_bytes(),
                       headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)
    assert ok.status_code == 200  # the worker survived the bad request
