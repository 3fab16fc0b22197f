"""Running ``purifier serve`` from tests, as a user would, on a fixed loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

PORT = 18280
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (scripts/bootstrap.sh installs it)")


def serve(args: list[str], state_dir, timeout: float = 240) -> subprocess.CompletedProcess:
    """``purifier serve ARGS --port PORT`` with its state in ``state_dir``."""
    env = {**os.environ, "PURIFIER_SERVE_DIR": str(state_dir / "serve")}
    command = [sys.executable, "-m", "cli.main", "serve", *args, "--port", str(PORT)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def check_with_tritonclient(address: str, headers: dict, fmnist_test, model: str) -> None:
    """NVIDIA's tritonclient[http] against a front: server health, then UINT8 and BYTES (PNG files) inputs, binary and JSON,
    requested outputs honoured (binary or not, as asked), every output binary when none is named."""
    import numpy as np
    import tritonclient.http as httpclient

    from purifier.images import encode_png

    client = httpclient.InferenceServerClient(address)
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    images, labels = fmnist_test.images[:8], fmnist_test.labels[:8]
    for binary in (True, False):
        tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        asked = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("index", "probabilities")]
        # a copy for every call: tritonclient writes its framing header into the dict it is given
        result = client.infer(model, [tensor], outputs=asked, headers=dict(headers))
        index, probabilities = result.as_numpy("index"), result.as_numpy("probabilities")
        assert result.get_output("label") is None and probabilities.shape == (8, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
        assert (index == labels).sum() >= 6 and ("binary_data_size" in (result.get_output("index").get("parameters") or {})) == binary
    files = httpclient.InferInput("image", [2], "BYTES")
    files.set_data_from_numpy(np.array([encode_png(image) for image in images[:2]], dtype=object), binary_data=True)
    result = client.infer(model, [files], headers=dict(headers))  # no outputs named: all come back as binary data
    names = {label.decode() for label in result.as_numpy("label")}
    assert names <= set(fmnist_test.class_names) and result.as_numpy("purification_changed_prediction").dtype == bool
