"""Pieces every trainer shares: configs -> fingerprints, data, records and test-set metrics."""

from __future__ import annotations

import shutil
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from purifier.bundle import Bundle, load_bundle, write_bundle
from purifier.data import ImageDataset
from purifier.errors import DataError, PurifierError
from purifier.transforms import NOISELESS_KINDS
from training import distributed
from training.loop import TrainState, run_epochs


@dataclass(kw_only=True)
class TrainConfig:
    """Arguments every trainer takes; each trainer's config adds its own."""

    out: Path
    data_dir: Path | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    widths: tuple[int, ...] | None = None  # None: the model family's default for the data (ResNetSmall 16,32,64; unet.sized_for)
    seed: int = 0
    limit: int | None = None
    test_limit: int | None = None  # score the finished bundle on the first N test images (None: all of them)
    name: str | None = None
    restart: bool = False
    command: str | None = None
    precision: str = "fp32"
    checkpoint_every_min: float = 10.0  # within an epoch, checkpoint after the first batch this long after the last checkpoint


# Arguments that say where things go, how often the run is checkpointed, or how much of the test split scores the result,
# not what is trained: they may change between resumes.
_NOT_FINGERPRINTED = {"out", "restart", "device", "name", "command", "checkpoint_dir", "checkpoint_every_min", "test_limit"}
# Arguments that say how fast a step runs, not what it computes (training/precision.py): they may change between
# resumes too, and each epoch's history entry records them.
_SPEED_SETTINGS = {"precision"}


def fingerprint(config: Any) -> dict[str, Any]:
    """The training-relevant arguments of a config dataclass, JSON-friendly."""
    return {f.name: _plain(getattr(config, f.name)) for f in fields(config) if f.name not in _NOT_FINGERPRINTED | _SPEED_SETTINGS}


def arguments(config: Any) -> dict[str, Any]:
    return {key: _plain(value) for key, value in asdict(config).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def train_epochs(state: TrainState, config: Any, epochs: int, train_epoch) -> TrainState:
    """The resumable epoch loop with this run's checkpoint directory and argument fingerprint."""
    return run_epochs(state, epochs, train_epoch, checkpoint_dir_for(config.out), fingerprint(config), config.restart,
                      {f.name: _plain(f.default) for f in fields(config) if f.default is not MISSING},
                      {name: _plain(getattr(config, name)) for name in _SPEED_SETTINGS}, config.checkpoint_every_min * 60)


def finished_bundle(config: Any) -> Bundle | None:
    """The bundle an earlier run of the same training wrote to ``config.out``, if it finished (None with ``restart``).
    A bundle there that was trained with other settings is refused rather than overwritten."""
    if config.restart or not (Path(config.out) / "bundle.json").exists():
        return None
    bundle = load_bundle(config.out)
    recorded = (bundle.manifest.get("training") or [{}])[-1].get("arguments", {})
    ignored = {"noise_std"} if getattr(config, "transform", None) in NOISELESS_KINDS else set()  # RT1 runs once recorded a σ they never used
    # an option left unset (None) takes whatever default the data gave, so it never conflicts with the recorded value
    changed = [key for key, value in fingerprint(config).items()
               if key in recorded and key not in ignored and value is not None and recorded[key] != value]
    if changed:
        raise PurifierError(f"{config.out} already holds a bundle trained with other settings ({', '.join(changed)}); "
                            "use another --out, or --restart to train it again")
    return bundle


def dataset_entry(data: ImageDataset, data_dir: Path | None) -> dict[str, Any]:
    """bundle.json's ``dataset``: what the models take, and where the data lay (so evaluation and quantization find it)."""
    entry = {"name": data.name, "input_shape": list(data.input_shape), "class_names": list(data.class_names)}
    return {**entry, "data_dir": str(Path(data_dir).resolve())} if data_dir is not None else entry


def checkpoint_dir_for(out: Path) -> Path:
    """Where a run writing bundle ``out`` keeps its checkpoints: a hidden sibling directory."""
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


def classifier_and_training_data(config: Any) -> tuple[Bundle, ImageDataset, torch.Tensor, torch.Tensor]:
    """The bundle named by ``config.classifier`` and its data set's training split (shapes checked)."""
    base = load_bundle(config.classifier)
    data = base.data("train", config.data_dir).head(config.limit)
    images, labels = data.tensors()
    if tuple(data.input_shape) != base.input_shape:
        raise DataError(f"data images are {data.input_shape} but bundle {config.classifier} expects {base.input_shape}; use the classifier's data")
    return base, data, images, labels


def scoring_split(base: Bundle, config: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The test images and labels the finished bundle is scored on (the first ``config.test_limit``), and the protocol
    its metrics record."""
    test = base.data("test", config.data_dir).head(config.test_limit)
    images, labels = test.tensors()
    return images, labels, {"split": "test", "images": len(test)}


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of float NCHW images: the classifier's built-in normalisation."""
    return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def training_record(stage: str, config: Any, state: TrainState) -> dict[str, Any]:
    return {
        "stage": stage,
        "command": getattr(config, "command", None),
        "arguments": arguments(config),
        "epochs": state.epoch,
        "wall_time_s": round(state.elapsed_s, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_threads": torch.get_num_threads(),
        "history": state.history,
    }


def metric(value: float, **protocol: Any) -> dict[str, Any]:
    return {"value": round(float(value), 4), "protocol": protocol}


def publish(out: Path, manifest: dict[str, Any], models: dict[str, nn.Module]) -> Bundle:
    """Write the finished bundle, then drop the run's checkpoint: the bundle is the result (rank 0 under torchrun)."""
    if distributed.is_main():
        write_bundle(out, manifest, models)
        shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)
    distributed.barrier()
    return load_bundle(out)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
