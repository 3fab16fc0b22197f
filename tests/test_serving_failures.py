"""Bundles that cannot be served: the server must not start, or must stop, with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from purifier.bundle import DEFAULT_BUNDLE
from purifier.fsutil import sha256_file
from tests.serving_helpers import PORT, needs_java
from tests.serving_helpers import serve as _serve

pytestmark = needs_java


def _no_server_left():
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{PORT}/ping", timeout=5)


def _damaged_copy(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_BUNDLE, broken)
    graph = broken / "onnx" / "pipeline.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    return broken


def test_tampered_bundle_is_refused_before_starting(tmp_path):
    result = _serve([str(_damaged_copy(tmp_path))], tmp_path)
    assert result.returncode == 2 and "sha256" in result.stderr and result.stderr.count("\n") == 1
    _no_server_left()


def test_model_that_fails_in_the_worker_stops_the_server(tmp_path):
    broken = _damaged_copy(tmp_path)  # truncated graph, re-hashed: verification passes, ONNX Runtime fails
    manifest = json.loads((broken / "bundle.json").read_text())
    manifest["files"]["onnx/pipeline.onnx"] = sha256_file(broken / "onnx" / "pipeline.onnx")
    (broken / "bundle.json").write_text(json.dumps(manifest))
    result = _serve([str(broken)], tmp_path)
    assert result.returncode == 2 and "failed to load" in result.stderr, result.stderr
    _no_server_left()
