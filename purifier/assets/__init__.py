"""Files that ship inside the package, so an installed ``purifier`` (``pip install .``, a wheel) finds them
from any directory: the default bundle, the default purifier and one Fashion-MNIST test image per class. The
repository's ``bundles/fmnist-default``, ``bundles/fmnist-purifier`` and ``examples/fashion-mnist`` are links to
these. Both bundles are chosen from the evaluation reports by ``evaluation.ranking``'s declared rule."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_BUNDLE_DIR = ASSETS / "fmnist-default"  # the strongest system: what 'purifier serve' serves
DEFAULT_PURIFIER_DIR = ASSETS / "fmnist-purifier"  # the strongest system with a purifier: what 'purifier purify' uses
EXAMPLE_IMAGES = ASSETS / "examples" / "fashion-mnist"
# The checkout's committed bundles (baselines, flows); absent when the package is installed from a wheel.
CHECKOUT_BUNDLES = ASSETS.parent.parent / "bundles"
# The AToP RT1 pipeline (random transform -> purifier -> classifier), the served default until the ranking replaced it:
# what the benchmarks and tests of the stochastic pipeline use.
REFERENCE_PIPELINE = CHECKOUT_BUNDLES / "fmnist-atop-rt1"
