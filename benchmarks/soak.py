"""Soak: the TorchServe front under steady load for a bounded time, across key renewals and one killed worker.

8 clients send real Fashion-MNIST PNGs for ``--minutes`` (default 20), each reading keys.json before a request
and once more if refused (serving.server_state.keyed_request), with keys that live ``--key-minutes`` (default 4,
so they are renewed several times). Halfway, the classify worker is killed with SIGKILL; TorchServe starts a new
one. Counts every non-200 answer with its time, and the resident memory of all server processes (TorchServe's
frontend and workers, the sidecar) after warm-up and at the end (the end includes the restarted worker, not the
killed one). Passes when no error falls outside the
recovery window (``--recovery-s`` after the kill) and memory grew by less than 10%; writes JSON.

    python benchmarks/soak.py [--minutes 20] [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from purifier.assets import REFERENCE_PIPELINE
from purifier.data import load_dataset
from purifier.images import encode_png
from serving import server_state, torchserve
from serving.server_state import keyed_request

PORT = 18480
CLIENTS = 8
SERVER_PROCESSES = ("org.pytorch.serve.ModelServer", "model_service_worker", "serving.sidecar")


def server_rss() -> int:
    """Resident bytes of every server process (frontend, workers, sidecar)."""
    total = 0
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in " ".join(process.info["cmdline"] or []) for marker in SERVER_PROCESSES):
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
    return total


def classify_worker_pid(server: server_state.Server) -> int:
    response = keyed_request("GET", f"{server.management_url}/models/{server.model}", "management", timeout=10)
    return int(response.json()[0]["workers"][0]["pid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--key-minutes", type=int, default=4)
    parser.add_argument("--recovery-s", type=float, default=60.0, help="errors allowed this long after the worker is killed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    os.environ["PURIFIER_SERVE_DIR"] = tempfile.mkdtemp(prefix="purifier-soak-")
    pngs = [encode_png(image) for image in load_dataset("fashion-mnist", "test").images[:512]]
    server = torchserve.serve(REFERENCE_PIPELINE, port=PORT, access=torchserve.Access(token_expiration_min=args.key_minutes))
    started, stop = time.monotonic(), threading.Event()
    answered, errors, lock = [0], [], threading.Lock()

    def client(offset: int) -> None:
        index = offset
        while not stop.is_set():
            try:
                status = keyed_request("POST", server.prediction_url(), "inference", data=pngs[index % len(pngs)], timeout=60).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            with lock:
                answered[0] += 1
                if status != 200:
                    errors.append((round(time.monotonic() - started, 1), status))
            index += CLIENTS

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(min(120, args.minutes * 60 / 10))
        rss_after_warmup = server_rss()
        time.sleep(max(0.0, args.minutes * 30 - (time.monotonic() - started)))
        killed_at = round(time.monotonic() - started, 1)
        os.kill(classify_worker_pid(server), signal.SIGKILL)
        time.sleep(max(0.0, args.minutes * 60 - (time.monotonic() - started)))
        rss_end = server_rss()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        renewals = (server_state.state_dir() / "logs" / "sidecar.log").read_text().count("renewed the inference key")
        server_state.stop()
    outside = [error for error in errors if not killed_at <= error[0] <= killed_at + args.recovery_s]
    growth = rss_end / rss_after_warmup - 1
    report = {
        "minutes": args.minutes, "clients": CLIENTS, "key_minutes": args.key_minutes, "key_renewals": renewals, "requests": answered[0],
        "worker_killed_at_s": killed_at, "recovery_window_s": args.recovery_s, "errors": len(errors),
        "errors_in_recovery_window": len(errors) - len(outside), "errors_outside_recovery_window": outside[:50],
        "rss_after_warmup_mb": round(rss_after_warmup / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1), "rss_growth": round(growth, 4),
        "passed": not outside and growth < 0.10 and renewals >= 1,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
