"""Per-epoch checkpoints that survive a kill: written atomically, loaded without unpickling code."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(directory) / CHECKPOINT, buffer.getvalue())


def load_checkpoint(directory: Path, fingerprint: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` if there is one made with the same ``fingerprint``.

    A checkpoint from different training arguments is refused, so resuming never mixes runs. An
    argument the checkpoint does not record (an option added since it was written) counts as the
    same when it is at its value in ``defaults``: the run it resumes trained without it. One it
    records that ``fingerprint`` leaves out (a speed setting such as the precision) is not compared.
    """
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise PurifierError(f"checkpoint {path} is unreadable ({type(error).__name__}); delete it or pass --restart") from None
    saved = state.get("fingerprint", {})
    recorded = {key: saved.get(key, (defaults or {}).get(key)) for key in fingerprint}
    if recorded != fingerprint:
        changed = sorted(key for key in fingerprint if recorded[key] != fingerprint[key])
        raise PurifierError(
            f"checkpoint {path} was made with different arguments ({', '.join(changed)}); "
            "rerun with the same arguments to resume, or pass --restart to start over"
        )
    return state
