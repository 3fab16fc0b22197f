"""Files that ship inside the package, so an installed ``purifier`` (``pip install .``, a wheel) finds them
from any directory: the default bundle and one Fashion-MNIST test image per class. The repository's
``bundles/fmnist-default`` and ``examples/fashion-mnist`` are links to these."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_BUNDLE_DIR = ASSETS / "fmnist-default"
EXAMPLE_IMAGES = ASSETS / "examples" / "fashion-mnist"
# The checkout's committed bundles (baselines, flows); absent when the package is installed from a wheel.
CHECKOUT_BUNDLES = ASSETS.parent.parent / "bundles"
