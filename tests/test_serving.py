"""The real TorchServe on 127.0.0.1 with a stochastic purification pipeline (AToP RT1: random transform, purifier,
classifier), the bundle that exercises every stage: real PNGs in, right labels out. The default bundle, a classifier
alone, is served by test_readme.py and test_operations.py.

The module starts one server with ``purifier serve`` as a user would and stops it at the end
(TorchServe keeps a machine-wide pid file, so only one runs at a time; failures to start are
tested in test_serving_failures.py). Request loops are bounded.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from purifier.assets import EXAMPLE_IMAGES, REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.images import encode_png
from serving.metrics import bundle_sha256
from serving.server_state import read_keys
from serving.service import PurificationService
from tests.serving_helpers import PORT, check_with_tritonclient, needs_java
from tests.serving_helpers import serve as _serve

pytestmark = needs_java


FIRST = 100
MODEL = REFERENCE_PIPELINE.name
DEFAULT_CLASSES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, fmnist_test):
    """The pipeline served with a fixed transform seed; the first 100 test images posted first."""
    state = tmp_path_factory.mktemp("server")
    started = _serve([str(REFERENCE_PIPELINE), "--seed", "0"], state)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        keys = read_keys(state / "serve")
        url = f"http://127.0.0.1:{PORT}/predictions/{MODEL}"
        headers = {"Authorization": f"Bearer {keys.inference}"}
        first = [requests.post(url, data=encode_png(image), headers=headers, timeout=30) for image in fmnist_test.images[:FIRST]]
        yield {"url": url, "key": keys.inference, "stdout": started.stdout, "state": state, "first": first, "headers": headers}
    finally:
        _serve(["--stop"], state)


def test_the_pipeline_classifies_real_fashion_mnist_pngs(server, fmnist_test):
    for response in server["first"]:
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "index", "probabilities", "purification_changed_prediction"}
        assert body["label"] == fmnist_test.class_names[body["index"]]
    correct = sum(r.json()["index"] == label for r, label in zip(server["first"], fmnist_test.labels[:FIRST]))
    # The pipeline's clean accuracy is 87.25% on all 10k test images (bundle.json); the
    # bare classifier's is 92.7%. 85% over these 100 leaves room for sampling, not for a broken server.
    assert correct >= 0.85 * FIRST, f"{correct}/{FIRST} right"


def test_server_answers_exactly_as_the_offline_pipeline(server, fmnist_test):
    """Same bundle, same seed, one image per request in order: identical predictions."""
    offline = PurificationService.from_bundle(REFERENCE_PIPELINE, seed=0)
    for response, image in zip(server["first"], fmnist_test.images[:FIRST]):
        (expected,) = offline.run(image[None]).predictions
        assert response.json() == expected.to_dict()


def test_status_and_second_start_report_the_running_model(server):
    status = _serve(["--status"], server["state"])
    assert status.returncode == 0 and MODEL in status.stdout
    again = _serve([str(REFERENCE_PIPELINE)], server["state"])
    assert again.returncode == 0 and "already running" in again.stdout


def test_printed_curl_line_works(server):
    line = next(l.split("try:", 1)[1].strip() for l in server["stdout"].splitlines() if "try:" in l)
    env = {**os.environ, "PURIFIER_SERVE_DIR": str(server["state"] / "serve"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30, env=env)
    assert json.loads(result.stdout)["label"] in DEFAULT_CLASSES


def test_bad_image_and_missing_token_are_client_errors(server):
    bad = requests.post(server["url"], data=b"\x89PNG\r\n\x1a\nbroken", headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()
    anonymous = requests.post(server["url"], data=b"x", timeout=30)
    assert anonymous.status_code in (400, 401) and "Token" in anonymous.text
    ok = requests.post(server["url"], data=(EXAMPLE_IMAGES / "bag.png").read_bytes(),
                       headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)
    assert ok.status_code == 200  # the worker survived the bad request


def test_json_multipart_v2_and_purify_only_requests(server, fmnist_test):
    pngs = [encode_png(image) for image in fmnist_test.images[FIRST:FIRST + 4]]
    labels = fmnist_test.labels[FIRST:FIRST + 4]
    base = f"http://127.0.0.1:{PORT}"
    as_json = requests.post(server["url"], json={"image": base64.b64encode(pngs[0]).decode(), "return_purified": True},
                            headers=server["headers"], timeout=30)
    assert as_json.status_code == 200 and Image.open(io.BytesIO(base64.b64decode(as_json.json()["purified_png_base64"]))).size == (28, 28)
    multipart = requests.post(server["url"], files={"data": ("shoe.png", pngs[1], "image/png")}, headers=server["headers"], timeout=30)
    assert multipart.status_code == 200 and multipart.json()["label"] in DEFAULT_CLASSES
    v2 = requests.post(f"{base}/v2/models/{MODEL}/infer", headers=server["headers"], timeout=30, json={
        "id": "batch-7", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "data": [base64.b64encode(p).decode() for p in pngs]}]})
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    assert v2.json()["id"] == "batch-7" and outputs["probabilities"]["shape"] == [4, 10]
    assert sum(int(i == label) for i, label in zip(outputs["index"]["data"], labels)) >= 3
    purify_only = requests.post(f"{base}/predictions/{MODEL}-purify", data=pngs[2], headers=server["headers"], timeout=30)
    assert purify_only.status_code == 200 and set(purify_only.json()) == {"purified_png_base64"}


def test_bad_inputs_get_400s_with_reasons_and_the_worker_keeps_serving(server, fmnist_test):
    bodies = {
        "empty": b"", "not_an_image": b"plain text, not an image", "corrupt": encode_png(fmnist_test.images[0])[:80],
        "bad_json": b'{"image": ', "too_many_pixels": _blank_png(5000, 5000), "bad_dimensions": _blank_png(3000, 2),
    }
    for reason, body in bodies.items():
        response = requests.post(server["url"], data=body, headers=server["headers"], timeout=30)
        assert response.status_code == 400 and response.json()["reason"] == reason, (reason, response.status_code, response.text)
    bad_v2 = requests.post(f"http://127.0.0.1:{PORT}/v2/models/{MODEL}/infer", headers=server["headers"], timeout=30,
                           json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 1], "data": [0] * 1024}]})
    assert bad_v2.status_code == 400 and bad_v2.json()["reason"] == "bad_tensor"
    assert requests.post(server["url"], data=encode_png(fmnist_test.images[0]), headers=server["headers"], timeout=30).status_code == 200


def test_bad_items_in_a_batch_do_not_spoil_the_good_ones(server, fmnist_test):
    """Good and bad images sent together land in shared batches: each gets its own answer."""
    good = encode_png(fmnist_test.images[0])

    def post(index: int) -> int:
        body = good if index % 2 else b"not an image at all"
        return requests.post(server["url"], data=body, headers=server["headers"], timeout=60).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(post, range(64)))
    assert statuses == [400 if index % 2 == 0 else 200 for index in range(64)]


def test_prometheus_metrics_are_scraped(server):
    """One endpoint: the workers' metrics by Prometheus conventions, readiness, key expiry and TorchServe's own."""
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(
        requests.get(f"http://127.0.0.1:{PORT + 2}/metrics", timeout=30).text) for s in family.samples}
    model = (("model", MODEL),)
    images = samples[("purifier_images_total", model)]
    assert images >= FIRST and samples[("purifier_batch_size_sum", model)] == images
    for stage in ("decode", "purify", "classify"):
        assert samples[("purifier_stage_duration_seconds_count", (("model", MODEL), ("stage", stage)))] > 0
    assert samples[("purifier_request_duration_seconds_count", model)] >= FIRST
    assert samples[("purifier_rejected_inputs_total", (("model", MODEL), ("reason", "not_an_image")))] >= 1
    assert samples[("purifier_model_ready", model)] == 1 and samples[("purifier_model_ready", (("model", f"{MODEL}-purify"),))] == 1
    assert samples[("purifier_key_expiry_timestamp_seconds", (("key", "inference"),))] > time.time()
    sha = bundle_sha256(load_bundle(REFERENCE_PIPELINE))
    assert samples[("purifier_model_info", (("bundle", MODEL), ("bundle_sha256", sha), ("mode", "classify")) + model)] == 1
    assert any(name.startswith("ts_inference_requests") for name, _ in samples)


def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _worker_pid(server, model: str = MODEL) -> int:
    management = read_keys(server["state"] / "serve").management
    response = requests.get(f"http://127.0.0.1:{PORT + 1}/models/{model}", headers={"Authorization": f"Bearer {management}"}, timeout=10)
    return int(response.json()[0]["workers"][0]["pid"])


def test_concurrent_clients_get_no_errors_and_memory_stays_bounded(server, fmnist_test):
    """32 clients × 20 requests, real images, no 4xx/5xx; the worker's memory grows by less than 64 MiB."""
    pngs = [encode_png(image) for image in fmnist_test.images[:64]]
    worker = psutil.Process(_worker_pid(server))
    before = worker.memory_info().rss

    def client(index: int) -> list[int]:
        with requests.Session() as session:
            return [session.post(server["url"], data=pngs[(index + k) % len(pngs)], headers=server["headers"], timeout=60).status_code
                    for k in range(20)]

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = [status for result in pool.map(client, range(32)) for status in result]
    assert len(statuses) == 640 and set(statuses) == {200}
    assert worker.memory_info().rss - before < 64 * 2**20


def test_a_killed_worker_is_restarted_and_serves_again(server, fmnist_test):
    """SIGKILL the classify worker mid-load: TorchServe starts a new one and requests succeed again."""
    png = encode_png(fmnist_test.images[0])
    old_pid = _worker_pid(server)
    with ThreadPoolExecutor(max_workers=4) as pool:
        inflight = [pool.submit(requests.post, server["url"], data=png, headers=server["headers"], timeout=60) for _ in range(8)]
        os.kill(old_pid, signal.SIGKILL)
        for future in inflight:
            future.result()  # answered one way or another: no hung connection
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = requests.post(server["url"], data=png, headers=server["headers"], timeout=60)
        if response.status_code == 200:
            break
        time.sleep(1)
    assert response.status_code == 200 and _worker_pid(server) != old_pid
    assert all(requests.post(server["url"], data=png, headers=server["headers"], timeout=60).status_code == 200 for _ in range(10))


def test_nvidias_tritonclient_checks_health_and_infers_with_binary_data_on_and_off(server, fmnist_test):
    check_with_tritonclient(f"127.0.0.1:{PORT}", server["headers"], fmnist_test, MODEL)
