"""The second front: the same models in KServe's Python ModelServer (PyPI ``kserve``), with no Java.

Open Inference Protocol v2 over REST on PORT: server live/ready and metadata, model metadata and
readiness from KServe; inference (``/v2/models/NAME/infer``, JSON or binary tensor data, and TorchServe's
``/predictions/NAME``) through the same parser, answerer and encoder as the TorchServe front
(serving.protocols, serving.answering), so the model names (NAME classifies, NAME-purify purifies),
outputs and errors are the same. Same security defaults: 127.0.0.1 unless told
otherwise, and every request needs the inference key of ``keys.json``, which this process makes and
renews itself (the key it replaces stays valid for a minute, so a client never sees a refusal). The
server's Prometheus metrics are on PORT+2. SIGTERM: uvicorn stops accepting, answers what is in flight
(at most ``DRAIN_TIMEOUT_S``) and the process exits 0.

``purifier serve --front kserve`` starts it as ``python -m serving.kserve_front CONFIG.json``: kserve
parses ``sys.argv`` when it is imported, so the settings travel in a file, not on the command line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import sys
import threading
import time
from pathlib import Path

import kserve
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from kserve import ModelServer
from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
from kserve.protocol.rest.server import RESTServer
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily

from purifier.errors import BadInputError
from serving.answering import Answerer
from serving.metrics import MetricFamilies, ServingMetrics
from serving.protocols import encode_body, error_body
from serving.server_state import (
    DRAIN_TIMEOUT_S,
    KEY_REFUSED,
    Keys,
    publish_keys,
    renewal_due,
    served_models,
)
from serving.service import CertifySettings, PurificationService

OLD_KEY_GRACE_S = 60.0


class KeyRing:
    """The keys of this front: made here, published to keys.json, renewed before they expire; the inference key
    it replaced is still accepted for ``OLD_KEY_GRACE_S``."""

    def __init__(self, directory: Path, lifetime_s: float) -> None:
        self.directory, self.lifetime_s = directory, lifetime_s
        self.keys = self._new_keys(None)
        self.previous: tuple[str, float] | None = None

    def _new_keys(self, old: Keys | None) -> Keys:
        expires = time.time() + self.lifetime_s
        keys = Keys(secrets.token_urlsafe(9), secrets.token_urlsafe(9), old.api if old else secrets.token_urlsafe(9), expires, expires)
        publish_keys(self.directory, keys)
        return keys

    def renew_if_due(self) -> bool:
        if not renewal_due(self.keys.inference_expires, self.lifetime_s, time.time()):
            return False
        self.previous = (self.keys.inference, time.time() + OLD_KEY_GRACE_S)
        self.keys = self._new_keys(self.keys)
        return True

    def accepts(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        now, keys = time.time(), self.keys
        if now < keys.inference_expires and hmac.compare_digest(token.strip(), keys.inference):
            return True
        return self.previous is not None and now < self.previous[1] and hmac.compare_digest(token.strip(), self.previous[0])


class KeyCheck:
    """ASGI middleware: a request without a current inference key gets 401 (the message TorchServe's refusals carry)."""

    def __init__(self, app, keyring: KeyRing) -> None:
        self.app, self.keyring = app, keyring

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.keyring.accepts(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"code": 401, "type": "InvalidKeyException",
                           "message": f"{KEY_REFUSED}. Token either incorrect, expired, or not provided correctly"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def build_model(answerer: Answerer):
    """The kserve Model of ``answerer``'s model: what KServe's health, readiness and metadata endpoints describe."""
    class PurificationModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(answerer.model_name)
            self.ready = True

        def get_input_types(self) -> list[dict]:
            """One input of image files; the same tensor is also accepted as UINT8 [N, H, W, C] or FP32 [N, C, H, W] pixels."""
            return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

        def get_output_types(self) -> list[dict]:
            if answerer.mode == "purify":
                return [{"name": "purified", "datatype": "BYTES", "shape": [-1]}]
            classes = len(answerer.service.bundle.class_names)
            return [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "index", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                    {"name": "purification_changed_prediction", "datatype": "BOOL", "shape": [-1]}]

    return PurificationModel()


def answer_route(answerers: dict[str, Answerer]):
    """Inference on this front, through the same parser and encoder as the TorchServe front: TorchServe's
    ``/predictions/NAME`` (raw image, multipart, JSON, v2 JSON) and v2 ``/v2/models/NAME/infer`` (JSON or binary tensor
    data), each request shaped as TorchServe hands it to its handler. KServe's own v2 decoding is not used: it turns
    binary BYTES inputs into UTF-8 text and refuses image files, and takes tritonclient's JSON requests (sent without a
    Content-Type) for binary data."""
    async def answer(model: str, request: Request):
        if model not in answerers:
            return JSONResponse({"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {model}"}, status_code=404)
        headers = {key.lower(): value for key, value in request.headers.items()}
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form()
            item = {key: (await value.read()) if hasattr(value, "read") else value for key, value in form.multi_items()}
        else:
            body = await request.body()
            try:
                item = {"body": json.loads(body) if kind == "application/json" else body}
            except ValueError:
                item = {"body": body}
        (answer,) = await asyncio.to_thread(answerers[model].answer, [(item, headers)])
        if isinstance(answer, BadInputError):
            return JSONResponse(error_body(answer), status_code=400)
        payload, extra = encode_body(*answer)
        if isinstance(payload, bytes):
            return Response(payload, headers=extra, media_type=extra.get("Content-Type"))
        return JSONResponse(payload)

    return answer


class ScrapeTime:
    """purifier_model_ready and purifier_key_expiry_timestamp_seconds, read when scraped."""

    def __init__(self, models: list, keyring: KeyRing | None) -> None:
        self.models, self.keyring = models, keyring

    def collect(self):
        ready = GaugeMetricFamily("purifier_model_ready", "1 when the model is loaded and ready", labels=["model"])
        for model in self.models:
            ready.add_metric([model.name], float(bool(model.ready)))
        yield ready
        if self.keyring is not None:
            expiry = GaugeMetricFamily("purifier_key_expiry_timestamp_seconds", "When each key expires (renewed before)", labels=["key"])
            expiry.add_metric(["inference"], self.keyring.keys.inference_expires)
            expiry.add_metric(["management"], self.keyring.keys.management_expires)
            yield expiry


def run(config: dict) -> None:
    """Serve the bundle of ``config`` (written by serving.launch) until SIGTERM."""
    directory, port, host = Path(config["state"]), config["port"], config["host"]
    service = PurificationService.from_bundle(config["bundle"], runtime=config["runtime"], seed=config["seed"])
    families = MetricFamilies()
    certify = CertifySettings(**config["certify"])
    name = config["model"]
    answerers = {model: Answerer(service, model, mode, ServingMetrics(model, families), certify)
                 for model, mode in served_models(name, service.bundle.has_purifier).items()}
    models = [build_model(answerer) for answerer in answerers.values()]
    keyring = KeyRing(directory, config["token_expiration_min"] * 60) if config["token_auth"] else None
    families.registry.register(ScrapeTime(models, keyring))
    start_http_server(port + 2, addr=host, registry=families.registry)
    if keyring is not None:
        app.add_middleware(KeyCheck, keyring=keyring)
        threading.Thread(target=_renew_forever, args=(keyring,), daemon=True).start()
    app.add_exception_handler(BadInputError, lambda request, error: JSONResponse(error_body(error), status_code=400))
    answer = answer_route(answerers)  # added before KServe's own routes, so these paths are answered here
    app.add_api_route("/predictions/{model}", answer, methods=["POST", "PUT"])
    app.add_api_route("/v2/models/{model}/infer", answer, methods=["POST"])

    class LocalModelServer(ModelServer):
        """KServe's ModelServer with its REST server bound to ``host`` (KServe binds 0.0.0.0) and no gRPC."""

        def start(self, models: list) -> None:
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                                           grace_period=int(DRAIN_TIMEOUT_S))
            self._rest_server.config.host = host  # the uvicorn server it made reads this config when it starts
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    print(f"kserve front: {', '.join(m.name for m in models)} on http://{host}:{port}, metrics on http://{host}:{port + 2}/metrics", flush=True)
    LocalModelServer(http_port=port, enable_grpc=False, workers=1).start(models)


def _renew_forever(keyring: KeyRing) -> None:
    while True:
        if keyring.renew_if_due():
            print(f"renewed the keys; they expire at {time.ctime(keyring.keys.inference_expires)}", flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
