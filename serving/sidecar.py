"""The process that runs beside TorchServe for as long as it does: renews the keys before they
expire, and serves the server's one Prometheus endpoint.

- **Keys.** TorchServe's keys expire ``token_expiration_min`` after they are made. When one has
  less than a fifth of its lifetime left (at most 10 minutes before expiry) the sidecar asks
  TorchServe's token API for a new one (``GET /token?type=inference|management`` with the API
  key) and publishes it to ``keys.json`` (serving.server_state).
- **Metrics.** ``GET /metrics`` on the metrics address answers the handler workers' metrics
  (serving.metrics, multiprocess files), ``purifier_model_ready`` and
  ``purifier_key_expiry_timestamp_seconds`` computed at scrape time, and TorchServe's own
  metrics, read from its internal address.

It does no inference and never imports torch. ``python -m serving.sidecar --help``.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from serving.server_state import (
    Server,
    model_ready,
    pid_alive,
    publish_keys,
    read_keys,
    read_torchserve_keys,
    renewal_due,
    worker_metrics,
)

POLL_S = 1.0


def renew_keys(directory: Path, management_url: str, lifetime_s: float, now: float | None = None) -> list[str]:
    """Renew each published key that is due; returns the kinds renewed. Each new key is published as soon as
    TorchServe has written it."""
    renewed = []
    for kind in ("inference", "management"):
        keys = read_keys(directory)
        if keys is None or not renewal_due(getattr(keys, f"{kind}_expires"), lifetime_s, time.time() if now is None else now):
            continue
        response = requests.get(f"{management_url}/token", params={"type": kind}, headers={"Authorization": f"Bearer {keys.api}"}, timeout=10)
        if response.status_code != 200:
            print(f"renewing the {kind} key failed: HTTP {response.status_code} {response.text.strip()[:200]}", flush=True)
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fresh = read_torchserve_keys(directory)
            if fresh is not None and getattr(fresh, kind) != getattr(keys, kind):
                publish_keys(directory, fresh)
                renewed.append(kind)
                print(f"renewed the {kind} key; it expires at {time.ctime(getattr(fresh, f'{kind}_expires'))}", flush=True)
                break
            time.sleep(0.01)
    return renewed


class WorkerMetrics:
    """The handler workers' metrics, read from their multiprocess files at each scrape."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self):
        yield from worker_metrics(self.directory).collect()


class ScrapeTimeCollector:
    """Gauges computed when scraped: whether each model is ready, and when each key expires."""

    def __init__(self, server: Server, directory: Path) -> None:
        self.server, self.directory = server, directory

    def collect(self):
        ready = GaugeMetricFamily("purifier_model_ready", "1 when the model has a READY worker", labels=["model"])
        for model in self.server.models:
            ready.add_metric([model], float(model_ready(replace(self.server, models=(model,)), self.directory)))
        yield ready
        keys = read_keys(self.directory)
        if keys is not None:
            expiry = GaugeMetricFamily("purifier_key_expiry_timestamp_seconds", "When each key expires (renewed before)", labels=["key"])
            expiry.add_metric(["inference"], keys.inference_expires)
            expiry.add_metric(["management"], keys.management_expires)
            yield expiry


def metrics_handler(registry: CollectorRegistry, torchserve_metrics: str):
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = generate_latest(registry)
            try:
                body += requests.get(f"{torchserve_metrics}/metrics", timeout=5).content
            except requests.RequestException:
                pass  # TorchServe's own metrics are missing from this scrape; ours are not
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return MetricsHandler


def run(server: Server, directory: Path, host: str, port: int, torchserve_metrics: str, lifetime_s: float) -> None:
    """Serve /metrics and renew keys until TorchServe stops or SIGTERM arrives."""
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(directory))
    registry.register(ScrapeTimeCollector(server, directory))
    httpd = ThreadingHTTPServer((host, port), metrics_handler(registry, torchserve_metrics))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(f"sidecar: metrics on http://{host}:{port}/metrics; keys renewed before they expire", flush=True)
    while not stopping.is_set() and pid_alive():
        if server.token_auth:
            try:
                renew_keys(directory, server.management_url, lifetime_s)
            except requests.RequestException as error:
                print(f"renewing keys failed, retrying: {error}", flush=True)
        stopping.wait(POLL_S)
    httpd.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("state", type=Path, help="the server's state directory")
    parser.add_argument("--metrics-host", required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--torchserve-metrics", required=True, help="TorchServe's internal metrics address")
    parser.add_argument("--management", required=True, help="TorchServe's management address")
    parser.add_argument("--models", required=True, help="comma-separated model names")
    parser.add_argument("--key-lifetime-min", type=float, required=True)
    parser.add_argument("--no-token-auth", action="store_true")
    args = parser.parse_args(argv)
    models = tuple(args.models.split(","))
    server = Server(models[0], models, "", args.management, "", token_auth=not args.no_token_auth)
    run(server, args.state, args.metrics_host, args.metrics_port, args.torchserve_metrics, args.key_lifetime_min * 60)


if __name__ == "__main__":
    main()
