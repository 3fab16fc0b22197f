"""TorchServe handler: a thin adapter from TorchServe's request batch to PurificationService.

Each request body is an encoded image; each response is the JSON of a Prediction, or a 400
with {"error": ...} for an image that cannot be decoded (the rest of the batch is served).
A failure to load is logged as one line starting with LOAD_FAILED, which `purifier serve`
looks for to stop the server with that reason instead of leaving it answering 503.
"""

import logging

import numpy as np

from purifier.errors import ImageDecodeError
from serving.service import PurificationService

LOAD_FAILED = "PURIFIER_MODEL_LOAD_FAILED"


class PurifierHandler:
    def initialize(self, context) -> None:
        try:
            settings = (context.model_yaml_config or {}).get("handler") or {}
            self.service = PurificationService.from_bundle(context.system_properties["model_dir"], seed=settings.get("seed"))
        except Exception as error:
            logging.getLogger(__name__).error("%s %s: %s", LOAD_FAILED, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            raise
        self.initialized = True

    def handle(self, data, context):
        responses: list = [None] * len(data)
        decoded, positions = [], []
        for position, request in enumerate(data):
            try:
                decoded.append(self.service.decode(request.get("data") or request.get("body") or b""))
                positions.append(position)
            except ImageDecodeError as error:
                context.set_response_status(400, "Bad Request", idx=position)
                responses[position] = {"error": str(error)}
        if decoded:
            predictions, _ = self.service.run(np.stack(decoded))
            for position, prediction in zip(positions, predictions):
                responses[position] = prediction.to_dict()
        return responses
