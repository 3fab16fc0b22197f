"""`purifier purify` at scale: killed and resumed, split over 2 torchrun processes, data set input, .npz shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from purifier.errors import PurifierError
from serving.batch import purify_folder

PURIFIER = [sys.executable, "-m", "cli.main", "purify"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def source(tmp_path_factory, fmnist_test):
    """300 real test images as PNG and JPEG files in two class folders, plus one broken file."""
    root = tmp_path_factory.mktemp("scale") / "src"
    for index in range(300):
        folder = root / ("shoes" if fmnist_test.labels[index] in (5, 7, 9) else "other")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fmnist_test.images[index][..., 0]).save(folder / f"img{index:03d}.{'jpg' if index % 4 == 0 else 'png'}")
    (root / "other" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    dst = tmp_path_factory.mktemp("reference") / "dst"
    summary = purify_folder(source, dst, batch_size=8)
    assert (summary.total, summary.written, summary.failed) == (301, 300, 1)
    return dst


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and ".shards" not in p.parts and p.name != "summary.json")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and ".shards" not in p.parts and p.name != "summary.json")
    assert files_a == files_b
    for relative in files_a:
        assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


def test_a_killed_job_resumes_to_the_uninterrupted_result(source, reference, tmp_path):
    dst = tmp_path / "dst"
    process = subprocess.Popen([*PURIFIER, str(source), str(dst), "--batch-size", "8"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((dst / ".shards").glob("*.jsonl")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((dst / ".shards").glob("*.jsonl")))
    assert 1 <= done < 38, f"the job was not killed mid-way ({done} of 38 shards done)"
    assert not (dst / "predictions.jsonl").exists()
    last = sorted(p.relative_to(source) for p in source.rglob("*.*"))[-1].with_suffix(".png")
    (dst / last.parent).mkdir(parents=True, exist_ok=True)
    (dst / last.parent / f".{last.name}.stale.tmp").write_bytes(b"half an image")  # as a kill mid-write leaves it
    rerun = subprocess.run([*PURIFIER, str(source), str(dst), "--batch-size", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # one broken input: exit status 1, everything else written
    assert "shards were already done" in rerun.stdout
    assert not list(dst.rglob("*.tmp")) and not list(dst.rglob(".*.partial"))
    _same_tree(dst, reference)


def test_two_torchrun_processes_write_the_single_process_result(source, reference, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    dst = tmp_path / "dst"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, "-m", "cli.main", "purify",
                             str(source), str(dst), "--batch-size", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert (dst / "predictions.jsonl").exists(), result.stdout + result.stderr
    _same_tree(dst, reference)
    summary = json.loads((dst / "summary.json").read_text())
    assert (summary["total"], summary["written"], summary["failed"]) == (301, 300, 1)


def test_a_dataset_split_into_npz_shards(tmp_path, fmnist_test):
    summary = purify_folder(None, tmp_path / "dst", dataset="fashion-mnist", split="test", limit=100, batch_size=40, fmt="npz")
    assert (summary.total, summary.written, summary.failed) == (100, 100, 0)
    shards = sorted((tmp_path / "dst").glob("shard-*.npz"))
    assert [p.name for p in shards] == ["shard-000000.npz", "shard-000001.npz", "shard-000002.npz"]
    with np.load(shards[0]) as shard:
        assert shard["purified"].shape == (40, 28, 28, 1) and shard["purified"].dtype == np.uint8
        assert list(shard["names"][:2]) == ["test/000000", "test/000001"]
        assert np.mean(shard["index"] == fmnist_test.labels[:40]) >= 0.8
    records = (tmp_path / "dst" / "predictions.jsonl").read_text().splitlines()
    assert len(records) == 100 and json.loads(records[41])["output"] == "shard-000001.npz"


def test_resuming_with_other_settings_is_refused(source, reference, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(reference, dst)
    with pytest.raises(PurifierError, match="other settings \\(seed"):
        purify_folder(source, dst, batch_size=8, seed=1)
