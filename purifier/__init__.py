"""Core of the adversarial purification server: models, random transforms, the differentiable
Pipeline, the bundle format and data loading. Never imports training, export or serving.

Public API::

    import purifier
    model = purifier.load("bundles/fmnist-atop-rt1")   # RT -> purifier -> classifier, eval mode
    logits = model(images)                            # float NCHW in [0, 1]

The names below are imported on first use, so light modules (``purifier.errors``, used by the
server's status check) do not pull in torch.
"""

from importlib import import_module

_EXPORTS = {
    "Bundle": "purifier.bundle", "load": "purifier.bundle", "load_bundle": "purifier.bundle",
    "BundleError": "purifier.errors", "DataError": "purifier.errors", "ImageDecodeError": "purifier.errors", "PurifierError": "purifier.errors",
    "Pipeline": "purifier.pipeline", "RandomTransform": "purifier.transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'purifier' has no attribute {name!r}")
