"""README.md as a user runs it: every ```bash and ```python block, exactly as printed, from a
directory that looks like the repository's root (its entries linked; bundles/ and everything a
block writes are local), with ``.venv/bin`` on the PATH and the server of the README's first
block running on 127.0.0.1:8080. A block preceded by ``<!-- illustrative: why -->`` is only
listed. Then the defects a new user met, each against the real server or the real command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.serving_helpers import needs_java

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- illustrative: (?P<why>[^\n]*?) -->\n)?```(?P<language>bash|python)\n(?P<code>.*?)\n```", re.S)
SERVE_BLOCK = "scripts/bootstrap.sh serve"
URL = "http://127.0.0.1:8080/predictions/fmnist-default"
ERRORS = ('"error"', '"code": 4', '"code": 5', "Traceback", "error:")


def readme_blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, why-illustrative or None) of every shell and Python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m["language"], m["code"], m["why"]) for m in BLOCK.finditer(text)]


RUNNABLE = [(line, language, code) for line, language, code, why in readme_blocks() if why is None and not code.startswith(SERVE_BLOCK)]

# What a block's output must show beyond "no error": keyed by a line the block contains.
EXPECTED = {
    "X-Return-Purified": lambda out: out.count('"purified_png_base64"') == 3 and '"name": "purified"' in out and out.count('"label"') >= 3,
    "--key)\ncurl": lambda out: '"label": "Bag"' in out,
    "purifier evaluate bundles/fmnist-atop-rt1": lambda out: "worst of 4 draws" in out,
    "purifier purify examples": lambda out: out.count("purified 10/10 images") == 2 and "purified 1000/1000 images" in out,
    "import purifier": lambda out: "accuracy on 100 test images" in out,
    "import tritonclient.http": lambda out: "live: True ready: True" in out and "[b'Bag']" in out,
}


def _environment(state: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}", "PURIFIER_SERVE_DIR": str(state)}


def _run(code: str, language: str, workdir: Path, state: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=workdir, env=_environment(state), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The repository's top-level entries linked into a fresh directory; bundles/ holds links to each committed bundle."""
    root = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in ("bundles", "reports", ".git"):
            (root / entry.name).symlink_to(entry)
    (root / "bundles").mkdir()
    for bundle in (ROOT / "bundles").iterdir():
        (root / "bundles" / bundle.name).symlink_to(bundle)
    return root


@pytest.fixture(scope="module")
def server(workdir, tmp_path_factory):
    """The README's first block, as printed: set up, then serve the default model on 127.0.0.1:8080."""
    state = tmp_path_factory.mktemp("serve-state")
    (_, language, code, _), = [block for block in readme_blocks() if block[2].startswith(SERVE_BLOCK)]
    started = _run(code, language, workdir, state)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"state": state, "stdout": started.stdout, "key": _run("purifier serve --key", "bash", workdir, state).stdout.strip()}
    finally:
        _run("purifier serve --stop", "bash", workdir, state)


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert len(blocks) >= 12 and all(why is None or len(why) > 20 for *_, why in blocks)
    assert sum(why is None for *_, why in blocks) >= 6
    assert all(any(key in code for code in (c for _, _, c in RUNNABLE)) for key in EXPECTED)  # no stale expectation


@needs_java
def test_the_serve_block_prints_a_curl_line_that_works(server):
    assert "serving model 'fmnist-default'" in server["stdout"]
    assert "purify only" not in server["stdout"]  # the default has no purifier, so no fmnist-default-purify model
    line = next(line for line in server["stdout"].splitlines() if "try:" in line).split("try:", 1)[1].strip()
    answered = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60, env=_environment(server["state"]))
    assert '"label": "Sneaker"' in answered.stdout, answered.stdout + answered.stderr


@needs_java
@pytest.mark.parametrize("line,language,code", RUNNABLE, ids=[f"README line {line}" for line, _, _ in RUNNABLE])
def test_readme_block_runs_as_printed(line, language, code, workdir, server):
    result = _run(code, language, workdir, server["state"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not any(marker in result.stdout for marker in ERRORS), result.stdout[-3000:]
    for key, check in EXPECTED.items():
        if key in code:
            assert check(output), output[-3000:]


@needs_java
def test_json_without_content_type_is_answered_with_the_header_to_add(server):
    body = '{"image": "iVBORw0KGgo="}'
    response = requests.post(URL, data=body, headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/x-www-form-urlencoded"},
                             timeout=30)
    assert response.status_code == 400 and "Content-Type: application/json" in response.json()["error"]
    raw = requests.post(URL, data=(ROOT / "examples" / "fashion-mnist" / "bag.png").read_bytes(),
                        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert raw.status_code == 400 and "curl -T" in raw.json()["error"]


@needs_java
def test_a_request_without_a_valid_key_is_told_so(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.put(URL, data=(ROOT / "examples" / "fashion-mnist" / "bag.png").read_bytes(), headers=headers, timeout=30)
        assert response.status_code == 400 and "Token Authorization failed" in response.json()["message"]  # TorchServe's status, as the README says


def test_purifier_alone_lists_the_commands_and_version_prints(workdir, tmp_path):
    alone = _run("purifier", "bash", workdir, tmp_path)
    assert alone.returncode == 2 and "command_name" not in alone.stderr
    assert all(f"    {command} " in alone.stderr for command in ("train", "evaluate", "serve", "purify", "export"))
    assert re.fullmatch(r"purifier \d+\.\d+\.\d+\n", _run("purifier --version", "bash", workdir, tmp_path).stdout)


def test_a_bundle_trained_on_a_folder_is_evaluated_where_it_was_trained(workdir, tmp_path, fmnist_test):
    """The README's own-images commands at smoke size: evaluate finds the data from bundle.json, and without the data it
    fails in one line before creating its output folder."""
    from purifier.images import encode_png

    for split, offset in (("train", 0), ("test", 300)):
        for index in range(offset, offset + 150):
            label = int(fmnist_test.labels[index])
            if label < 3:
                folder = tmp_path / "my-data" / split / fmnist_test.class_names[label].replace("/", "-")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{index:05d}.png").write_bytes(encode_png(fmnist_test.images[index]))
    (tmp_path / "bundles").mkdir()
    smoke = "--epochs 1 --limit 200"
    steps = [f"purifier train classifier --dataset folder --data-dir my-data --out bundles/my-classifier {smoke}",
             f"purifier train purifier --classifier bundles/my-classifier --data-dir my-data --out bundles/my-model {smoke}",
             "purifier evaluate bundles/my-model --out reports/my-model --quick --images 8"]
    for step in steps:
        result = _run(step, "bash", tmp_path, tmp_path / "state")
        assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "my-data").rename(tmp_path / "elsewhere")
    failed = _run("purifier evaluate bundles/my-model --out reports/again --quick", "bash", tmp_path, tmp_path / "state")
    assert failed.returncode == 2 and "--data-dir" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports" / "again").exists()


def test_status_key_and_version_answer_without_importing_torch():
    """What a container's health check runs every 30 s must not load torch (1.6 s and 290 MB each time)."""
    probe = ("import sys\nfrom cli.main import main\nfor argv in (['serve', '--status'], ['serve', '--key'], ['--version']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PURIFIER_SERVE_DIR": "/nonexistent-purifier-state"})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr


@needs_java
def test_status_says_not_running_after_stop(server, workdir):
    """Last in this module: it stops the README's server (the fixture's own stop then finds nothing to stop)."""
    assert _run("purifier serve --status", "bash", workdir, server["state"]).returncode == 0
    assert _run("purifier serve --stop", "bash", workdir, server["state"]).returncode == 0
    result = _run("purifier serve --status", "bash", workdir, server["state"])
    assert result.returncode == 2 and "not running" in result.stderr, result.stderr
