"""The comparison point of benchmarks/serve.py: a plain TorchServe handler, as commonly written.

It decodes each request with Pillow and runs the bundle's PyTorch pipeline in eager mode, one
inference call per request batch, and answers the top class. No ONNX, no protocol handling,
no metrics: what a first deployment of the same models would look like.
"""

import io
import json

import numpy as np
import torch
from PIL import Image

from purifier.bundle import load_bundle


class EagerHandler:
    def initialize(self, context) -> None:
        self.bundle = load_bundle(context.system_properties["model_dir"])
        self.model = self.bundle.pipeline(seed=None)
        self.initialized = True

    def handle(self, data, context):
        channels, height, width = self.bundle.input_shape
        images = []
        for item in data:
            image = Image.open(io.BytesIO(item.get("body") or item.get("data"))).convert("L" if channels == 1 else "RGB").resize((width, height))
            array = np.asarray(image, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1)))
        with torch.no_grad():
            probabilities = torch.softmax(self.model(torch.stack(images)), dim=1)
        names = self.bundle.class_names
        return [json.dumps({"label": names[int(row.argmax())], "probability": float(row.max())}) for row in probabilities]
