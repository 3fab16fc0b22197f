"""Offline purification at scale: a folder tree or a data set split -> a PNG tree or .npz
shards, plus DST/predictions.jsonl and DST/summary.json.

Inputs, in a fixed order (sorted paths, or data set index), are cut into shards of
``shard_size`` images. Shard k draws its random transform from ``rng(seed, k)``, so any
process, in any order, after any number of restarts, writes the same outputs. A shard's images
are written first (each atomically), then its record DST/.shards/NNNNNN.jsonl (atomically): a
shard is done exactly when its record exists, and a rerun skips it. Unreadable inputs are
recorded with their error and counted; they never stop the job.

Under ``torchrun`` (WORLD_SIZE > 1) rank r takes shards r, r + W, r + 2W, …, ranks meet at a
gloo barrier, and rank 0 merges the records into predictions.jsonl and summary.json; the
result is identical to one process's. Decoding the next shard and encoding PNGs run in worker
threads while the runtime works on the current shard.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from purifier.assets import DEFAULT_PURIFIER_DIR
from purifier.data import load_dataset
from purifier.data.folder import list_images, list_non_images
from purifier.errors import ImageDecodeError, PurifierError
from purifier.fsutil import atomic_write_bytes, atomic_write_json
from purifier.images import encode_png
from serving.metrics import bundle_sha256
from serving.protocols import certification_fields
from serving.service import PurificationService

PREDICTIONS, SUMMARY, SHARDS = "predictions.jsonl", "summary.json", ".shards"
FORMATS = ("png", "npz")


@dataclass(frozen=True)
class Item:
    """One input: its name in the records, how to load it as uint8 (H, W, C), and its PNG output path."""

    name: str
    load: Callable[[], np.ndarray]
    output: str


@dataclass
class BatchSummary:
    """Counts over all shards (filled in by the merge), and what this run did: ``processed`` images in ``seconds``."""

    total: int = 0
    written: int = 0
    failed: int = 0
    changed: int = 0
    processed: int = 0
    seconds: float = 0.0
    shards: int = 0
    shards_skipped: int = 0
    skipped_non_images: int = 0
    skipped_files: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        resumed = f"; {self.shards_skipped} of {self.shards} shards were already done" if self.shards_skipped else ""
        skipped = f"; skipped {self.skipped_non_images} files that are not images (listed in summary.json)" if self.skipped_non_images else ""
        return (f"purified {self.written}/{self.total} images ({self.failed} failed, {self.changed} predictions changed by "
                f"purification); this run: {self.processed} images in {self.seconds:.1f}s, {self.images_per_s:.0f} images/s{resumed}{skipped}")


def folder_items(src: Path, service: PurificationService) -> list[Item]:
    """Every image below ``src``, decoded to the bundle's input shape; outputs mirror the tree as PNG."""
    files = list_images(src)
    outputs: dict[str, Path] = {}
    items = []
    for file in files:
        output = file.relative_to(src).with_suffix(".png").as_posix()
        if output in outputs:
            raise PurifierError(f"{outputs[output]} and {file} would both be written as {output}; rename one of them")
        outputs[output] = file
        items.append(Item(file.relative_to(src).as_posix(), lambda file=file: service.decode(file.read_bytes()), output))
    return items


def dataset_items(name: str, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Item]:
    """Every image (or the first ``limit``) of a data set split (``fashion-mnist``, ``cifar10``, ``folder``), named SPLIT/INDEX."""
    data = load_dataset(name, split, data_dir).head(limit)
    return [Item(f"{split}/{index:06d}", lambda index=index: data.images[index], f"{split}/{index:06d}.png") for index in range(len(data))]


def _shard_record(dst: Path, shard: int) -> Path:
    return dst / SHARDS / f"{shard:06d}.jsonl"


def _load(items: list[Item]) -> tuple[list[np.ndarray], list[Item], list[dict]]:
    images, kept, failures = [], [], []
    for item in items:
        try:
            images.append(item.load())
            kept.append(item)
        except (ImageDecodeError, OSError) as error:
            failures.append({"path": item.name, "error": str(error)})
            print(f"skipped {item.name}: {error}", file=sys.stderr)
    return images, kept, failures


@dataclass
class _ShardInFlight:
    """A purified shard whose outputs are still being written; its record follows once they all are."""

    shard: int
    records: list[dict]
    writes: list[Future]


def _start_shard(service: PurificationService, dst: Path, shard: int, loaded, fmt: str, seed: int, pool: ThreadPoolExecutor,
                 certify: bool = False) -> _ShardInFlight:
    """Purify one decoded shard and hand its outputs to the writer threads (the next shard runs meanwhile)."""
    images, kept, records = loaded
    writes: list[Future] = []
    if images:
        outcome = service.run(np.stack(images), rng=np.random.default_rng([seed, shard]))
        if fmt == "png":
            writes = [pool.submit(_write_png, dst / item.output, image) for item, image in zip(kept, outcome.purified)]
        else:
            npz = _npz_bytes(outcome.purified, [item.name for item in kept], outcome.predictions)
            writes = [pool.submit(atomic_write_bytes, dst / f"shard-{shard:06d}.npz", npz, False)]
        certificates = service.certify(np.stack(images), rng=np.random.default_rng([seed, shard, 1])) if certify else [None] * len(kept)
        for item, prediction, certificate in zip(kept, outcome.predictions, certificates):
            output = item.output if fmt == "png" else f"shard-{shard:06d}.npz"
            certified = {} if certificate is None else certification_fields(certificate, prediction, service.bundle.class_names)
            records.append({"path": item.name, "output": output, **prediction.to_dict(), **certified})
    return _ShardInFlight(shard, sorted(records, key=lambda record: record["path"]), writes)


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, encode_png(image), durable=False)


def _finish_shard(dst: Path, shard: _ShardInFlight) -> None:
    """Wait for the shard's outputs, flush them to disk, then write its record: from now on it counts as done."""
    for write in shard.writes:
        write.result()
    os.sync()
    atomic_write_bytes(_shard_record(dst, shard.shard), "".join(json.dumps(record) + "\n" for record in shard.records).encode())


def _npz_bytes(purified: np.ndarray, names: list[str], predictions: list) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, purified=purified, names=np.array(names), index=np.array([p.index for p in predictions]),
                        changed=np.array([p.purification_changed_prediction for p in predictions]))
    return buffer.getvalue()


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, with a gloo process group for the final barrier; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def _prefetch(pool: ThreadPoolExecutor, shards: list[int], items: list[Item], shard_size: int) -> Iterator[tuple[int, Future]]:
    """Each of ``shards`` with a future of its decoded images, the next one decoding while the current one runs."""
    ahead: Future | None = None
    for position, shard in enumerate(shards):
        current = ahead or pool.submit(_load, items[shard * shard_size:(shard + 1) * shard_size])
        if position + 1 < len(shards):
            following = shards[position + 1]
            ahead = pool.submit(_load, items[following * shard_size:(following + 1) * shard_size])
        yield shard, current


def purify(items: list[Item], dst: Path, service: PurificationService, shard_size: int = 256, seed: int = 0, fmt: str = "png",
           threads: int = 2, skipped: list[str] = (), certify: bool = False) -> BatchSummary:
    """Purify ``items`` into ``dst`` (resuming finished shards); merge records and summary once all shards are done.
    ``skipped``: the source's files that are not images, counted and listed in the summary."""
    if fmt not in FORMATS:
        raise PurifierError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    rank, world = _distributed()
    count = -(-len(items) // shard_size)
    _check_settings(dst, {"bundle": bundle_sha256(service.bundle), "seed": seed, "shard_size": shard_size, "format": fmt,
                          "inputs": len(items), "runtime": service.runtime.name, **({"certify": True} if certify else {})})
    summary = BatchSummary(total=len(items), shards=count, skipped_non_images=len(skipped), skipped_files=list(skipped))
    mine = [shard for shard in range(rank, count, world)]
    todo = [shard for shard in mine if not _shard_record(dst, shard).exists()]
    summary.shards_skipped = len(mine) - len(todo)
    _remove_stale_temporaries(dst, todo, items, shard_size, fmt)
    started = time.perf_counter()
    bar = tqdm(total=sum(len(items[s * shard_size:(s + 1) * shard_size]) for s in todo), desc=f"purify (rank {rank})", unit="img",
               file=sys.stderr, disable=None)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        in_flight: _ShardInFlight | None = None
        for shard, loaded in _prefetch(pool, todo, items, shard_size):
            started_shard = _start_shard(service, dst, shard, loaded.result(), fmt, seed, pool, certify)
            if in_flight is not None:
                _finish_shard(dst, in_flight)
            in_flight = started_shard
            summary.processed += len(started_shard.records)
            bar.update(len(started_shard.records))
        if in_flight is not None:
            _finish_shard(dst, in_flight)
    bar.close()
    summary.seconds = time.perf_counter() - started
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        _merge(dst, count, summary)
    return summary


def _remove_stale_temporaries(dst: Path, shards: list[int], items: list[Item], shard_size: int, fmt: str) -> None:
    """Delete the temporary files a killed run left behind while writing outputs of ``shards`` (this rank's to do)."""
    if fmt == "png":
        targets = {item.output for shard in shards for item in items[shard * shard_size:(shard + 1) * shard_size]}
    else:
        targets = {f"shard-{shard:06d}.npz" for shard in shards}
    for temporary in dst.rglob(".*.tmp"):
        name = temporary.name[1:-len(".tmp")].rsplit(".", 1)[0]  # ".NAME.RANDOM.tmp" -> "NAME"
        if (temporary.parent / name).relative_to(dst).as_posix() in targets:
            temporary.unlink(missing_ok=True)


def _check_settings(dst: Path, settings: dict) -> None:
    """Record the job's settings in DST/.shards/settings.json, or refuse to resume a job made with others."""
    path = dst / SHARDS / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = ", ".join(key for key in settings if saved.get(key) != settings[key])
            raise PurifierError(f"{dst} holds a job with other settings ({changed}); use another destination or delete it")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)  # every rank writes the same content; the rename is atomic


def _merge(dst: Path, count: int, summary: BatchSummary) -> None:
    """predictions.jsonl from every shard record, in order, and summary.json with the counts over all shards."""
    lines = []
    for shard in range(count):
        lines += _shard_record(dst, shard).read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    summary.written = sum("output" in record for record in records)
    summary.failed = sum("error" in record for record in records)
    summary.changed = sum(bool(record.get("purification_changed_prediction")) for record in records)
    atomic_write_bytes(dst / PREDICTIONS, "".join(lines).encode())
    atomic_write_json(dst / SUMMARY, {**asdict(summary), "images_per_s": round(summary.images_per_s, 1)})


def purify_folder(src: Path, dst: Path, bundle: Path | None = None, batch_size: int = 256, seed: int = 0, runtime: str = "onnxruntime",
                  fmt: str = "png", dataset: str | None = None, split: str = "test", data_dir: Path | None = None,
                  limit: int | None = None, certify: bool = False) -> BatchSummary:
    """The ``purifier purify`` job: a folder ``src`` (or a data set split) into ``dst``; ``certify`` adds each image's smoothed label and
    certified L2 radius (randomized-smoothing bundles only) to predictions.jsonl."""
    dst = Path(dst)
    service = PurificationService.from_bundle(bundle or DEFAULT_PURIFIER_DIR, runtime=runtime, seed=seed)
    if not service.bundle.has_purifier:
        raise PurifierError(f"{service.bundle.path} has no purifier, so there is nothing to purify; pass --bundle with one "
                            f"(the default, {DEFAULT_PURIFIER_DIR.name}, is the strongest the project has)")
    if certify and service.bundle.transform.kind != "gaussian":
        raise PurifierError(f"{service.bundle.path} cannot certify: its random transform is {service.bundle.transform.kind!r}, not gaussian; "
                            "drop --certify or pass a randomized-smoothing bundle")
    skipped: list[str] = []
    if dataset is not None:
        items = dataset_items(dataset, split, data_dir, limit)
    else:
        src = Path(src)
        if not src.is_dir():
            raise PurifierError(f"source folder {src} does not exist; pass a folder of images")
        if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
            raise PurifierError(f"destination {dst} lies inside the source {src}; choose a folder outside it")
        items = folder_items(src, service)
        skipped = [path.relative_to(src).as_posix() for path in list_non_images(src)]
    return purify(items, dst, service, shard_size=batch_size, seed=seed, fmt=fmt, skipped=skipped, certify=certify)
