"""Does the white-box evaluation of an imported classifier describe the graph the server runs?

The attacks differentiate through the PyTorch conversion of the user's ONNX graph (onnx2torch); the server runs
the graph itself in ONNX Runtime. Both are run on the evaluated clean images and on PGD examples crafted through
the conversion: where they agree on every prediction, an attack found against the conversion is one against the
served graph.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from evaluation.attacks import pgd
from purifier.models.imported import ImportedClassifier

EPS, STEPS = 0.1, 10  # the adversarial check: L∞ PGD-10 at the headline radius


def conversion_agreement(classifier: ImportedClassifier, images: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """Prediction agreement and max |logit difference| between ONNX Runtime and the conversion, clean and adversarial."""
    session = onnxruntime.InferenceSession(classifier.onnx_model().SerializeToString(), providers=["CPUExecutionProvider"])
    adversarial = pgd(classifier, images, labels, EPS, steps=STEPS, generator=torch.Generator().manual_seed(seed))
    record = {"images": len(labels), "adversarial_attack": f"PGD-{STEPS} L∞ {EPS:g} through the conversion"}
    for name, batch in (("clean", images), ("adversarial", adversarial)):
        with torch.no_grad():
            converted = classifier(batch).numpy()
        served = np.concatenate([session.run(None, {"image": part.numpy()})[0] for part in batch.split(256)])
        record[name] = {"argmax_agreement": float((converted.argmax(1) == served.argmax(1)).mean()),
                        "max_abs_logit_diff": float(np.abs(converted - served).max())}
    return record
