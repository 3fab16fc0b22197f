"""TorchServe handler: a thin adapter from TorchServe's request batch to serving.answering.

Every request item of the (dynamically batched) batch, with its headers, goes to the model's
Answerer, which runs the images of all readable items in one call (the random transform is
drawn per image); each item gets its own response: predictions (or purified images, for the
purify-only model), or a 400 with {"error", "reason"} for an item that cannot be read, while
the rest of the batch is served. Settings come from the archive's model-config YAML
(``handler: {seed, mode, runtime, certify}``; mode ``classify`` or ``purify``; certify: CertifySettings
for requests that ask ``certify=true``). A failure to load is logged as one
line starting with LOAD_FAILED, which `purifier serve` looks for to stop the server with that
reason instead of leaving it answering 503.
"""

import logging

from serving.answering import Answerer
from serving.protocols import encode_body, error_body
from serving.service import CertifySettings, PurificationService

LOAD_FAILED = "PURIFIER_MODEL_LOAD_FAILED"


class PurifierHandler:
    def initialize(self, context) -> None:
        try:
            settings = (context.model_yaml_config or {}).get("handler") or {}
            service = PurificationService.from_bundle(context.system_properties["model_dir"], runtime=settings.get("runtime", "onnxruntime"),
                                                      seed=settings.get("seed"))
            self.answerer = Answerer(service, context.model_name, settings.get("mode", "classify"),
                                     certify=CertifySettings(**(settings.get("certify") or {})))
        except Exception as error:
            logging.getLogger(__name__).error("%s %s: %s", LOAD_FAILED, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            raise
        self.initialized = True

    def handle(self, data, context):
        items = [(item, {str(k).lower(): str(v) for k, v in (context.get_all_request_header(position) or {}).items()})
                 for position, item in enumerate(data)]
        responses = []
        for position, answer in enumerate(self.answerer.answer(items)):
            if isinstance(answer, Exception):
                context.set_response_status(400, "Bad Request", idx=position)
                responses.append(error_body(answer))
                continue
            payload, headers = encode_body(*answer)  # v2 binary data where asked, with the headers that frame it
            for name, value in headers.items():
                context.set_response_header(position, name, value)
            responses.append(payload)
        return responses
