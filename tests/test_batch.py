"""The service on real images, and the offline batch job on a real folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import DEFAULT_BUNDLE
from purifier.errors import PurifierError
from purifier.images import encode_png
from serving.batch import purify_folder
from serving.service import PurificationService


@pytest.fixture(scope="module")
def service():
    return PurificationService.from_bundle(REFERENCE_PIPELINE, seed=0)


def test_default_pipeline_classifies_real_images(service, fmnist_test):
    outcome = service.run(fmnist_test.images[:300])
    predictions, purified = outcome.predictions, outcome.purified
    assert outcome.purify_ms > 0 and outcome.classify_ms > 0
    accuracy = np.mean([p.index == label for p, label in zip(predictions, fmnist_test.labels[:300])])
    assert accuracy >= 0.85
    assert purified.shape == (300, 28, 28, 1) and purified.dtype == np.uint8
    first = predictions[0]
    assert first.label == service.bundle.class_names[first.index] and len(first.probabilities) == 3
    assert list(first.probabilities)[0] == first.label and 0 < sum(first.probabilities.values()) <= 1.0001


def test_purification_changes_the_image_but_not_beyond_recognition(service, fmnist_test):
    purified = service.run(fmnist_test.images[:50]).purified
    assert service.purify(fmnist_test.images[:5]).shape == (5, 28, 28, 1)
    difference = np.abs(purified.astype(int) - fmnist_test.images[:50].astype(int)).mean()
    assert 1 < difference < 40


def _folder(root, fmnist_test, count):
    for index in range(count):
        sub = root / ("shoes" if fmnist_test.labels[index] in (5, 7, 9) else "other")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fmnist_test.images[index][..., 0]).save(sub / f"img{index}.{'jpg' if index % 3 == 0 else 'png'}")


def test_purify_folder_writes_every_image_and_a_line_each(tmp_path, fmnist_test):
    _folder(tmp_path / "src", fmnist_test, 40)
    (tmp_path / "src" / "other" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    summary = purify_folder(tmp_path / "src", tmp_path / "dst", batch_size=16)
    assert (summary.total, summary.written, summary.failed) == (41, 40, 1)
    saved = json.loads((tmp_path / "dst" / "summary.json").read_text())
    assert saved["skipped_non_images"] == 1 and saved["skipped_files"] == ["notes.txt"] and "skipped 1 files" in summary.describe()
    outputs = sorted(p.relative_to(tmp_path / "dst") for p in (tmp_path / "dst").rglob("*.png"))
    assert len(outputs) == 40 and all(p.suffix == ".png" for p in outputs)
    records = [json.loads(line) for line in (tmp_path / "dst" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 41
    failed = [r for r in records if "error" in r]
    assert [r["path"] for r in failed] == ["other/broken.png"]
    correct = [r["index"] == fmnist_test.labels[int(r["path"].split("img")[1].split(".")[0])] for r in records if "error" not in r]
    assert np.mean(correct) >= 0.8
    assert not list((tmp_path / "dst").rglob("*.tmp"))
    with Image.open(tmp_path / "dst" / next(r["output"] for r in records if "output" in r)) as image:
        assert image.size == (28, 28) and image.mode == "L"


def test_same_seed_same_output(tmp_path, fmnist_test):
    """With a stochastic pipeline: the seed fixes every draw."""
    _folder(tmp_path / "src", fmnist_test, 8)
    purify_folder(tmp_path / "src", tmp_path / "a", bundle=REFERENCE_PIPELINE)
    purify_folder(tmp_path / "src", tmp_path / "b", bundle=REFERENCE_PIPELINE)
    for file in (tmp_path / "a").rglob("*.png"):
        assert file.read_bytes() == (tmp_path / "b" / file.relative_to(tmp_path / "a")).read_bytes()


def test_name_collisions_and_bad_folders_are_refused(tmp_path, fmnist_test):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(encode_png(fmnist_test.images[0]))
    (tmp_path / "src" / "a.jpg").write_bytes(encode_png(fmnist_test.images[1]))
    with pytest.raises(PurifierError, match="both be written as a.png"):
        purify_folder(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(PurifierError, match="does not exist"):
        purify_folder(tmp_path / "nowhere", tmp_path / "dst")
    with pytest.raises(PurifierError, match="inside the source"):
        purify_folder(tmp_path / "src", tmp_path / "src" / "out")
    with pytest.raises(PurifierError, match="has no purifier, so there is nothing to purify; pass --bundle") as refused:
        purify_folder(tmp_path / "src", tmp_path / "dst", bundle=DEFAULT_BUNDLE)  # the served default: a classifier alone
    assert "\n" not in str(refused.value) and not (tmp_path / "dst").exists()
