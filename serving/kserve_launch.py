"""Start the KServe front (serving.kserve_front) for one bundle: ``purifier serve --front kserve``.

Exports the bundle to ONNX if needed, writes the front's settings to STATE/kserve.json, starts
``python -m serving.kserve_front`` (detached, or attached with ``foreground``), and returns once every served model
answers its v2 readiness endpoint; a front that cannot start is stopped and its log's last line raised.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from purifier.bundle import load_bundle
from purifier.errors import PurifierError
from serving.server_state import (
    SERVER_FILE,
    Server,
    model_ready,
    served_models,
    server_env,
    stay_until_signalled,
)
from serving.torchserve import Access, announce, fresh_state, model_name


def serve_kserve(bundle_path: Path | None = None, port: int = 8080, foreground: bool = False, timeout_s: float = 180.0,
                 host: str = "127.0.0.1", seed: int | None = None, runtime: str = "onnxruntime", certify: dict | None = None,
                 access: Access = Access()) -> Server:
    if importlib.util.find_spec("kserve") is None:
        raise PurifierError("the KServe front needs the kserve package: pip install 'adversarial-purifier[kserve]' (scripts/bootstrap.sh "
                            "test installs it)")
    from serving.runtime import parse_runtime  # imports torch: only when starting a server

    parse_runtime(runtime)  # a misspelt engine is refused here, not in the front's process
    bundle = load_bundle(bundle_path)
    if not (bundle.manifest.get("exports") or {}).get("onnx"):
        from export.onnx import export_bundle

        bundle = export_bundle(bundle.path)
    directory = fresh_state([port, port + 2], access, "pass --port N with N and N+2 free")
    name = model_name(bundle)
    config = {"state": str(directory), "bundle": str(bundle.path), "model": name, "port": port, "host": host, "seed": seed,
              "runtime": runtime, "certify": certify or {}, "token_auth": access.token_auth, "token_expiration_min": access.token_expiration_min}
    (directory / "kserve.json").write_text(json.dumps(config, indent=2))
    log = open(directory / "logs" / "kserve.log", "w")  # noqa: SIM115 (the child writes it for its whole life)
    env = server_env(directory)
    env.pop("PROMETHEUS_MULTIPROC_DIR")  # one process: its metrics live in memory
    process = subprocess.Popen([sys.executable, "-m", "serving.kserve_front", str(directory / "kserve.json")], cwd=directory,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, tuple(served_models(name, bundle.has_purifier)), f"http://127.0.0.1:{port}", "", f"http://127.0.0.1:{port + 2}", access.token_auth,
                    front="kserve", pid=process.pid)
    deadline = time.monotonic() + timeout_s
    while not model_ready(server, directory):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            lines = (directory / "logs" / "kserve.log").read_text(errors="replace").strip().splitlines()
            raise PurifierError(f"the KServe front did not start: {lines[-1] if lines else 'no output'}; see {directory / 'logs'}")
        time.sleep(0.3)
    (directory / SERVER_FILE).write_text(json.dumps(asdict(server)))
    announce(server, bundle)
    if foreground:
        stay_until_signalled(process, "the KServe front")
    return server
