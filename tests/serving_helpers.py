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
