"""`purifier serve --front kserve`: the real KServe ModelServer (PyPI kserve) on 127.0.0.1 with the default bundle
(a classifier without purifier, so no NAME-purify model), driven by the real tritonclient: the complete Open Inference
Protocol v2, the TorchServe front's answers and errors, the same key file, metrics on PORT+2, and a graceful stop."""

from __future__ import annotations

import base64
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from purifier.bundle import DEFAULT_BUNDLE
from purifier.images import encode_png
from serving.server_state import read_keys
from serving.service import PurificationService
from tests.serving_helpers import PORT, check_with_tritonclient
from tests.serving_helpers import serve as _serve

pytest.importorskip("kserve", reason="the KServe front needs the kserve extra (scripts/bootstrap.sh test installs it)")
from serving.kserve_front import OLD_KEY_GRACE_S, KeyRing  # noqa: E402 (only where kserve is installed)

BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def front(tmp_path_factory, fmnist_test):
    """The front with a fixed transform seed; the first 10 test images sent first, one v2 request each, in order."""
    state = tmp_path_factory.mktemp("kserve")
    started = _serve(["--front", "kserve", "--seed", "0"], state)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        headers = {"Authorization": f"Bearer {read_keys(state / 'serve').inference}"}
        first = [requests.post(f"{BASE}/v2/models/fmnist-default/infer", headers=headers, timeout=30, json={"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(encode_png(image)).decode()]}]})
            for image in fmnist_test.images[:10]]
        yield {"state": state, "headers": headers, "first": first}
    finally:
        _serve(["--stop"], state)


def test_tritonclient_sees_the_complete_protocol(front, fmnist_test):
    import tritonclient.http as httpclient

    check_with_tritonclient(f"127.0.0.1:{PORT}", front["headers"], fmnist_test, "fmnist-default")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{PORT}")
    assert client.is_model_ready("fmnist-default", headers=front["headers"])
    assert not client.is_model_ready("fmnist-default-purify", headers=front["headers"])  # nothing to purify with
    metadata = client.get_model_metadata("fmnist-default", headers=front["headers"])
    assert metadata["name"] == "fmnist-default" and {o["name"] for o in metadata["outputs"]} >= {"label", "probabilities"}


def test_answers_match_the_offline_pipeline(front, fmnist_test):
    """Seed 0, one image per request in order: the same predictions as the offline pipeline, in the TorchServe front's v2 form."""
    offline = PurificationService.from_bundle(DEFAULT_BUNDLE, seed=0)
    for answer, image in zip(front["first"], fmnist_test.images[:10]):
        assert answer.status_code == 200, answer.text
        outputs = {output["name"]: output["data"] for output in answer.json()["outputs"]}
        (expected,) = offline.run(image[None]).predictions
        assert outputs["label"] == [expected.label] and outputs["index"] == [expected.index]
        assert outputs["purification_changed_prediction"] == [expected.purification_changed_prediction]


def test_bad_input_and_missing_keys_are_refused_like_on_torchserve(front):
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"not an image").decode()]}]}
    refused = requests.post(f"{BASE}/v2/models/fmnist-default/infer", json=bad, headers=front["headers"], timeout=30)
    assert refused.status_code == 400 and refused.json()["reason"] == "not_an_image"
    anonymous = requests.get(f"{BASE}/v2/health/ready", timeout=30)
    assert anonymous.status_code == 401 and "Token Authorization failed" in anonymous.text
    assert requests.get(f"{BASE}/v2/health/ready", headers=front["headers"], timeout=30).status_code == 200


def test_metrics_status_and_key_on_the_kserve_front(front):
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(
        requests.get(f"http://127.0.0.1:{PORT + 2}/metrics", timeout=30).text) for s in family.samples}
    assert samples[("purifier_images_total", (("model", "fmnist-default"),))] >= 10
    assert samples[("purifier_model_ready", (("model", "fmnist-default"),))] == 1
    assert ("purifier_model_ready", (("model", "fmnist-default-purify"),)) not in samples
    assert samples[("purifier_rejected_inputs_total", (("model", "fmnist-default"), ("reason", "not_an_image")))] >= 1
    assert _serve(["--status"], front["state"]).returncode == 0
    assert _serve(["--key"], front["state"]).stdout.strip() == read_keys(front["state"] / "serve").inference


def test_the_kserve_keyring_renews_and_keeps_the_old_key_for_a_grace_period(tmp_path):
    ring = KeyRing(tmp_path, lifetime_s=3600)
    first = ring.keys.inference
    assert ring.accepts(f"Bearer {first}") and not ring.accepts("Bearer wrong") and not ring.renew_if_due()
    ring.lifetime_s = 1  # now within a fifth of its lifetime of expiry: due
    ring.keys = ring.keys.__class__(first, ring.keys.management, ring.keys.api, time.time() + 0.1, time.time() + 0.1)
    assert ring.renew_if_due() and read_keys(tmp_path).inference == ring.keys.inference != first
    assert ring.accepts(f"Bearer {first}") and ring.previous[1] - time.time() <= OLD_KEY_GRACE_S
