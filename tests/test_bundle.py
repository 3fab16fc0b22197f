"""Bundle round trip, verification of every file, and clear errors for damaged bundles."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import purifier
from evaluation.accuracy import accuracy
from purifier.assets import DEFAULT_PURIFIER_DIR
from purifier.bundle import DEFAULT_BUNDLE, load_bundle, update_manifest
from purifier.errors import BundleError


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_bundle.path, target)
    return target


def test_round_trip_gives_the_trained_model(tiny_bundle):
    manifest = tiny_bundle.manifest
    assert manifest["schema_version"] == 1 and manifest["dataset"]["input_shape"] == [1, 28, 28]
    assert manifest["purifier"]["random_transform"]["kind"] == "noise_mask"
    assert [record["stage"] for record in manifest["training"]] == ["classifier", "purifier"]
    assert set(manifest["files"]) == {"classifier.safetensors", "purifier.safetensors"}
    model = purifier.load(tiny_bundle.path, seed=0)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_shipped_default_and_purifier_are_complete_and_accurate(fmnist_test):
    """fmnist-default (served) is the PGD-AT classifier alone, fmnist-purifier (used by 'purifier purify') a purifier in front of
    it; each records the ranking that chose it, and its recorded clean accuracy is recomputed exactly on all 10k test images."""
    images, labels = fmnist_test.tensors()
    default, purifying = load_bundle(DEFAULT_BUNDLE), load_bundle(DEFAULT_PURIFIER_DIR)
    assert (default.name, purifying.name) == ("fmnist-default", "fmnist-purifier")
    assert not default.has_purifier and purifying.has_purifier
    for bundle in (default, purifying):
        assert bundle.class_names == list(fmnist_test.class_names) and bundle.manifest["selection"]["standings"]
        assert all(record["command"].startswith("purifier train") for record in bundle.manifest["training"])
        metrics = bundle.manifest["metrics"]
        assert accuracy(bundle.classifier(), images, labels) == metrics["clean_accuracy_classifier"]["value"] >= 0.85
    assert set(default.manifest["exports"]["onnx"]["graphs"]) == {"classifier", "pipeline"}
    assert accuracy(purifying.pipeline(seed=0), images, labels) == purifying.manifest["metrics"]["clean_accuracy_pipeline"]["value"]


def _flip_byte(path, offset=-10):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,match", [
    (lambda b: _flip_byte(b / "purifier.safetensors"), "does not match its sha256"),
    (lambda b: (b / "classifier.safetensors").write_bytes((b / "classifier.safetensors").read_bytes()[:1000]), "does not match its sha256"),
    (lambda b: (b / "purifier.safetensors").unlink(), "missing"),
    (lambda b: (b / "bundle.json").unlink(), "not a bundle"),
    (lambda b: (b / "bundle.json").write_text("{ not json"), "not valid JSON"),
])
def test_damaged_bundles_fail_to_load(bundle_copy, damage, match):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=match) as error:
        purifier.load(bundle_copy)
    assert "\n" not in str(error.value)


def _edit_manifest(path, edit):
    manifest = json.loads((path / "bundle.json").read_text())
    edit(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest))


def test_unknown_schema_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema version 99"):
        load_bundle(bundle_copy)


def test_weights_not_listed_are_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["files"].pop("purifier.safetensors"))
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(bundle_copy)


def test_weights_that_do_not_fit_the_architecture(bundle_copy, tiny_bundle):
    shutil.copy(bundle_copy / "classifier.safetensors", bundle_copy / "purifier.safetensors")
    from purifier.fsutil import sha256_file
    _edit_manifest(bundle_copy, lambda m: m["files"].update({"purifier.safetensors": sha256_file(bundle_copy / "purifier.safetensors")}))
    with pytest.raises(BundleError, match="purifier weights do not load"):
        purifier.load(bundle_copy)


def test_load_is_deterministic_per_seed(tiny_bundle):
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(purifier.load(tiny_bundle.path, seed=3)(x), purifier.load(tiny_bundle.path, seed=3)(x))


def test_records_made_by_two_jobs_on_one_bundle_are_both_kept(bundle_copy):
    """A long job records into bundle.json long after it loaded the bundle; what another job recorded meanwhile stays."""
    long_job_view = load_bundle(bundle_copy)
    (bundle_copy / "notes.txt").write_text("made by the other job\n")
    update_manifest(load_bundle(bundle_copy), lambda manifest: manifest.setdefault("exports", {}).update(other={"file": "notes.txt"}), ["notes.txt"])
    updated = update_manifest(long_job_view, lambda manifest: manifest["metrics"].update(robustness={"clean": 0.5}))
    assert updated.manifest["exports"]["other"] == {"file": "notes.txt"} and "notes.txt" in updated.manifest["files"]
    assert updated.manifest["metrics"]["robustness"] == {"clean": 0.5}
