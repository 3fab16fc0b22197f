"""Core of the adversarial purification server: models, random transforms, the differentiable
Pipeline, the bundle format and data loading. Never imports training, export or serving.

Public API::

    import purifier
    model = purifier.load("bundles/fmnist-default")   # RT -> purifier -> classifier, eval mode
    logits = model(images)                            # float NCHW in [0, 1]
"""

from purifier.bundle import Bundle, load, load_bundle
from purifier.errors import BundleError, DataError, ImageDecodeError, PurifierError
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform

__all__ = [
    "Bundle", "BundleError", "DataError", "ImageDecodeError", "Pipeline", "PurifierError",
    "RandomTransform", "load", "load_bundle",
]
