"""Training under torchrun with 2 CPU processes (gloo): one bundle, and a killed run resumes to the same weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from purifier.bundle import load_bundle

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


def _train(out: Path, epochs: int) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, "-m", "cli.main", "train", "classifier",
            "--epochs", str(epochs), "--limit", "1024", "--batch-size", "64", "--out", str(out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_processes_train_one_bundle_and_resume_after_a_kill(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = subprocess.run(_train(uninterrupted, 3), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    bundle = load_bundle(uninterrupted)
    assert [entry["epoch"] for entry in bundle.manifest["training"][0]["history"]] == [1, 2, 3]
    assert not (tmp_path / ".uninterrupted.checkpoint").exists()

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train(killed, 3), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".killed.checkpoint" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    for worker in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:  # torchrun's workers
        worker.send_signal(signal.SIGKILL)                                                             # have their own sessions
    process.wait()
    psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
    assert checkpoint.exists() and not (killed / "bundle.json").exists(), "the run was not killed between epochs 1 and 3"
    resumed = subprocess.run(_train(killed, 3), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]

    expected, got = load_bundle(uninterrupted).classifier().state_dict(), load_bundle(killed).classifier().state_dict()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
