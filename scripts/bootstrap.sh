#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Python 3.11:
#   scripts/bootstrap.sh serve [BUNDLE] [--port N]   set up, then serve the bundle (default model)
#   scripts/bootstrap.sh test [PYTEST ARGS]          set up, then run the test suite
# Set-up is idempotent: Debian packages (Java 17, Fashion-MNIST; for tests promtool) only when missing, the
# virtual environment .venv only when pyproject.toml changed since the last install.
set -euo pipefail
cd -P "$(dirname "$0")/.."  # physical path: a linked checkout must not write its path into .venv

job="${1:-}"
case "$job" in serve|test) shift ;; *) echo "usage: scripts/bootstrap.sh serve|test [ARGS...]" >&2; exit 2 ;; esac

apt_packages=()
command -v java >/dev/null 2>&1 || apt_packages+=(openjdk-17-jre-headless)
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || apt_packages+=(dataset-fashion-mnist)
[ "$job" = test ] && ! command -v promtool >/dev/null 2>&1 && apt_packages+=(prometheus)  # promtool checks the alert rules
if [ ${#apt_packages[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${apt_packages[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >&2
fi

python=python3.11; command -v "$python" >/dev/null 2>&1 || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" >&2
  # Without their dependencies, which name torchvision (and through it a CUDA torch): torchattacks (an independent PGD for
  # cross-checks), onnx2torch (import-classifier's ONNX -> PyTorch conversion) and foolbox (for the CIFAR-10 and ImageNet
  # sample images its wheel ships, the tests' real RGB images; foolbox itself is never imported).
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1 onnx2torch==1.5.15 foolbox==3.3.4 >&2
  rm -f .venv/.installed-*; touch "$stamp"
fi

case "$job" in
  serve) exec .venv/bin/purifier serve "$@" ;;
  test)  exec .venv/bin/python -m pytest "$@" ;;
esac
