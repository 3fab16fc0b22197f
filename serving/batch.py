"""Offline purification of a folder tree: SRC/**/image.* -> DST/**/image.png + DST/predictions.jsonl.

Every output file is written atomically (temporary file, then rename), so a killed job leaves
no partial image; an unreadable input is reported in predictions.jsonl with its error and
counted, and the job goes on.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from purifier.data.folder import list_images
from purifier.errors import ImageDecodeError, PurifierError
from purifier.fsutil import atomic_write_bytes
from purifier.images import encode_png
from serving.service import PurificationService

PREDICTIONS = "predictions.jsonl"


@dataclass
class BatchSummary:
    total: int = 0
    written: int = 0
    failed: int = 0
    changed: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        return (f"purified {self.written}/{self.total} images ({self.failed} failed, "
                f"{self.changed} predictions changed by purification) in {self.seconds:.1f}s, {rate:.0f} images/s")


def _output_names(src: Path, files: list[Path]) -> list[Path]:
    outputs = [file.relative_to(src).with_suffix(".png") for file in files]
    seen: dict[Path, Path] = {}
    for file, output in zip(files, outputs):
        if output in seen:
            raise PurifierError(f"{seen[output]} and {file} would both be written as {output}; rename one of them")
        seen[output] = file
    return outputs


def purify_folder(src: Path, dst: Path, bundle: Path | None = None, batch_size: int = 64, seed: int = 0, runtime: str = "onnxruntime") -> BatchSummary:
    """Purify every image below ``src`` into ``dst`` and write one JSON line per input."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PurifierError(f"source folder {src} does not exist; pass a folder of images")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise PurifierError(f"destination {dst} lies inside the source {src}; choose a folder outside it")
    files = list_images(src)
    outputs = _output_names(src, files)
    service = PurificationService.from_bundle(bundle, runtime=runtime, seed=seed)
    summary = BatchSummary(total=len(files))
    records: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(total=len(files), desc="purify", unit="img", file=sys.stderr, disable=None)
    for start in range(0, len(files), batch_size):
        chunk = list(zip(files[start:start + batch_size], outputs[start:start + batch_size]))
        images, kept = [], []
        for file, output in chunk:
            try:
                images.append(service.decode(file.read_bytes()))
                kept.append((file, output))
            except (ImageDecodeError, OSError) as error:
                summary.failed += 1
                records.append({"path": str(file.relative_to(src)), "error": str(error)})
                print(f"skipped {file}: {error}", file=sys.stderr)
        if images:
            outcome = service.run(np.stack(images))
            for (file, output), prediction, image in zip(kept, outcome.predictions, outcome.purified):
                atomic_write_bytes(dst / output, encode_png(image))
                records.append({"path": str(file.relative_to(src)), "output": str(output), **prediction.to_dict()})
                summary.written += 1
                summary.changed += prediction.purification_changed_prediction
        bar.update(len(chunk))
    bar.close()
    summary.seconds = time.perf_counter() - started
    atomic_write_bytes(dst / PREDICTIONS, "".join(json.dumps(record) + "\n" for record in records).encode())
    return summary
