"""Installed like a library: the wheel built from this checkout, installed into a fresh directory and run from
another one, finds its default bundle, default purifier and example images, serves `purifier --version`, and answers
`purifier serve --status` without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site directory the wheel was installed into, environment that imports from it, an unrelated working directory)."""
    root = tmp_path_factory.mktemp("install")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(root / "wheel")], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = (root / "wheel").glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True, timeout=300, capture_output=True)
    (root / "elsewhere").mkdir()
    env = {**os.environ, "PYTHONPATH": str(root / "site"), "PURIFIER_SERVE_DIR": str(root / "serve")}
    env.pop("PURIFIER_DEFAULT_BUNDLE", None)
    return root / "site", env, root / "elsewhere"


def _python(code: str, installed, timeout: float = 120) -> subprocess.CompletedProcess:
    site, env, cwd = installed
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_installed_package_finds_its_default_bundle_and_examples(installed):
    site = installed[0]
    result = _python("import purifier.assets as a, purifier.bundle as b, serving.server_state as s, cli.main as c; print(c.__file__); "
                     "print(b.load_bundle(b.DEFAULT_BUNDLE).path); print(b.load_bundle(a.DEFAULT_PURIFIER_DIR).path); "
                     "print(s.EXAMPLE_IMAGE.is_file())", installed)
    assert result.returncode == 0, result.stderr
    cli_file, bundle, purifier_bundle, example = result.stdout.split()
    assert all(path.startswith(str(site)) for path in (cli_file, bundle, purifier_bundle)) and example == "True"


def test_version_and_status_answer_without_torch(installed):
    version = _python("from cli.main import main; main(['--version'])", installed)
    assert version.returncode == 0 and version.stdout.strip() == "purifier 0.1.0"
    status = _python("import sys\nfrom cli.main import main\ntry:\n    main(['serve', '--status'])\nexcept SystemExit as e:\n"
                     "    print('exit', e.code, 'torch' in sys.modules)", installed)
    assert status.stdout.strip() == "exit 2 False" and "not running" in status.stderr


def test_the_installed_package_purifies_its_example_images(installed, tmp_path):
    site = installed[0]
    result = _python(f"from cli.main import main; main(['purify', '{site / 'purifier/assets/examples/fashion-mnist'}', '{tmp_path / 'out'}'])",
                     installed, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "purified 10/10 images" in result.stdout
