"""benchmarks/gpu.py, as far as it goes without a GPU: prepare the reference, measure, record each GPU engine's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check(*arguments: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *arguments], cwd=ROOT, check=True, capture_output=True, text=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run benchmarks/gpu.py itself")
def test_gpu_check_runs_the_cpu_engine_and_records_why_gpu_engines_did_not_run(tmp_path):
    _gpu_check("prepare", "--images", "32", "--dir", str(tmp_path / "check"))
    with np.load(tmp_path / "check" / "reference.npz") as reference:
        assert reference["image"].shape == (32, 1, 28, 28) and reference["logits"].shape == (32, 10)
    exports = json.loads((tmp_path / "check" / "bundle" / "bundle.json").read_text())["exports"]
    assert {"onnx", "onnx_fp16", "onnx_int8"} <= set(exports)

    out = tmp_path / "gpu.json"
    _gpu_check("measure", "--dir", str(tmp_path / "check"), "--budget-s", "2", "--out", str(out), "--engines", "torch,torch-cuda,tensorrt-fp16", "--largest-batch", "1024")
    report = json.loads(out.read_text())
    cpu = report["engines"]["torch"]
    assert cpu["ran"] and cpu["parity"]["agreement"] == 1.0 and cpu["parity"]["max_abs_logit_diff"] < 1e-4
    assert {"1", "64", "1024"} <= set(cpu["speed"]["batches"]) and cpu["speed"]["best_images_per_s"] > 0
    assert not report["engines"]["torch-cuda"]["ran"] and "needs a CUDA GPU" in report["engines"]["torch-cuda"]["reason"]
    assert not report["engines"]["tensorrt-fp16"]["ran"] and "TensorRT" in report["engines"]["tensorrt-fp16"]["reason"]
    assert report["torch_in_process"] == {"ran": False, "reason": "PyTorch sees no CUDA GPU here"}
    assert report["goals"]["tensorrt_fp16_best_images_per_s"] is None
