"""Atomic file and directory writes: a reader sees the old content or the new, never a part."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once: os.umask can only be read by setting it, which races when threads write files.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``
    (with permissions ``mode``, default what the umask allows).

    ``durable=False`` skips the fsync: still never a partial file after a killed process, but
    for power loss the caller must sync before recording the file as done (the batch job syncs
    once per shard)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask() if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: object, mode: int | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode(), mode=mode)


def staging_dir(final: Path) -> Path:
    """A fresh empty directory beside ``final`` to build its content in before ``publish_dir``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(staged, 0o777 & ~_umask())
    return staged


def publish_dir(staged: Path, final: Path) -> None:
    """Move a completed ``staged`` directory to ``final``, replacing what was there.

    Files get ordinary permissions first (some writers, safetensors among them, create 0600).
    """
    final = Path(final)
    for file in Path(staged).rglob("*"):
        if file.is_file():
            os.chmod(file, 0o666 & ~_umask())
    if final.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, retired / final.name)
        os.replace(staged, final)
        shutil.rmtree(retired)
    else:
        os.replace(staged, final)
