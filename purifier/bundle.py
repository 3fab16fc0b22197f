"""The bundle: one directory holding everything needed to serve or evaluate a trained system.

    BUNDLE/bundle.json              manifest (schema below), written last
    BUNDLE/classifier.safetensors   classifier weights (never pickle)
    BUNDLE/classifier.onnx          instead, for a classifier brought by ``purifier import-classifier``: its ONNX graph
    BUNDLE/purifier.safetensors     purifier weights, when the bundle has a purifier
    BUNDLE/onnx/*.onnx              exports, added by ``purifier export``, their weights in one onnx/weights-HASH.bin

bundle.json: ``schema_version``, ``name``, ``dataset`` {name, input_shape [C,H,W], class_names, data_dir (absolute, when trained with --data-dir)},
``classifier`` {architecture, config (incl. normalisation mean/std), weights},
``purifier`` (null or {method, architecture, config, weights, random_transform}),
``training`` (one record per stage: command, arguments, wall time), ``metrics`` (name ->
{value, protocol}), ``exports``, and ``files`` (relative path -> sha256), verified on load.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from purifier.data import ImageDataset, load_dataset
from purifier.assets import DEFAULT_BUNDLE_DIR
from purifier.errors import BundleError, DataError
from purifier.fsutil import atomic_write_json, publish_dir, sha256_file, staging_dir
from purifier.models import CLASSIFIERS, FLOWS, PURIFIERS, build
from purifier.models.imported import ImportedClassifier
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
DEFAULT_BUNDLE = Path(os.environ.get("PURIFIER_DEFAULT_BUNDLE", DEFAULT_BUNDLE_DIR))


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its directory and parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["dataset"]["input_shape"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["dataset"]["class_names"])

    @property
    def transform(self) -> RandomTransform:
        purifier = self.manifest.get("purifier")
        return RandomTransform(**purifier["random_transform"]) if purifier else RandomTransform()

    @property
    def dataset_kind(self) -> str:
        """The load_dataset name of the bundle's data ('folder' for bundles trained on an ImageFolder)."""
        name = self.manifest["dataset"]["name"]
        return "folder" if name.startswith("folder:") else name

    def data(self, split: str, data_dir: Path | str | None = None) -> ImageDataset:
        """A split of the bundle's data set: from ``data_dir`` if given, else from where the bundle was trained."""
        if data_dir is None:
            data_dir = self.manifest["dataset"].get("data_dir") or next(
                (record["arguments"].get("data_dir") for record in self.manifest.get("training", []) if record.get("arguments", {}).get("data_dir")), None)
            if data_dir is not None and not Path(data_dir).exists():
                raise DataError(f"{self.path} was trained on data in {data_dir}, which does not exist here; pass --data-dir with that data")
        if self.dataset_kind != "folder":
            return load_dataset(self.dataset_kind, split, Path(data_dir) if data_dir is not None else None)
        return load_dataset("folder", split, Path(data_dir) if data_dir is not None else None, self.input_shape).relabelled(tuple(self.class_names))

    @property
    def has_purifier(self) -> bool:
        return self.manifest.get("purifier") is not None

    def classifier(self) -> nn.Module:
        if not self.manifest.get("classifier"):
            raise BundleError(f"bundle {self.path} has no classifier (a flow bundle only serves as --flow / --joint-flow); pass a classifier or pipeline bundle")
        return _build_model(self, "classifier", CLASSIFIERS)

    def purifier(self) -> nn.Module | None:
        return _build_model(self, "purifier", PURIFIERS) if self.has_purifier else None

    def flow(self) -> nn.Module:
        """The normalizing flow of a flow bundle (``purifier train flow``), in eval mode."""
        if not self.manifest.get("flow"):
            raise BundleError(f"bundle {self.path} has no flow; pass a bundle written by 'purifier train flow'")
        return _build_model(self, "flow", FLOWS)

    def pipeline(self, seed: int | None = 0) -> Pipeline:
        """RT -> purifier -> classifier, in eval mode, frozen."""
        pipeline = Pipeline(self.classifier(), self.purifier(), self.transform, seed=seed).eval()
        pipeline.requires_grad_(False)
        return pipeline

    def weight_digests(self) -> dict[str, str]:
        """sha256 of each model's weights file (classifier, purifier, flow), by file name: what results computed on the bundle depend on."""
        files = self.manifest["files"]
        return dict(sorted((entry["weights"], files[entry["weights"]]) for entry in (self.manifest.get(role) for role in ("classifier", "purifier", "flow")) if entry))

    def file(self, relative: str) -> Path:
        return self.path / relative

    def training_records(self, role: str) -> list[dict[str, Any]]:
        """The training records of the classifier (role 'classifier') or of the purifier (every later stage)."""
        return [record for record in self.manifest["training"] if (record["stage"] == "classifier") == (role == "classifier")]


def _build_model(bundle: Bundle, role: str, registry: dict) -> nn.Module:
    entry = bundle.manifest[role]
    if entry["weights"].endswith(".onnx"):  # an imported classifier: the graph is the weights
        return registry[entry["architecture"]].from_file(bundle.file(entry["weights"]), **entry["config"]).eval()
    try:
        model = build(registry, entry["architecture"], entry["config"])
    except (KeyError, TypeError) as error:
        raise BundleError(f"bundle {bundle.path}: cannot build {role} ({error}); the bundle was made by an incompatible version") from None
    try:
        state = load_file(bundle.file(entry["weights"]))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise BundleError(f"bundle {bundle.path}: {role} weights do not load ({first_line}); retrain or re-copy the bundle") from None
    return model.eval()


def load_bundle(path: Path | str | None = None) -> Bundle:
    """Read and verify a bundle (default: the bundled Fashion-MNIST model).

    Raises BundleError when bundle.json is missing or unreadable, its schema is unknown, a
    listed file is missing, or any file's sha256 differs from the manifest.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle (no {MANIFEST}); pass a directory written by 'purifier train'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON ({error}); the bundle is damaged, re-copy or retrain it") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: bundle schema version {found!r} is not supported (expected {SCHEMA_VERSION}); re-export it with this version")
    files = manifest.get("files") or {}
    for role in ("classifier", "purifier", "flow"):
        entry = manifest.get(role)
        if entry and entry.get("weights") not in files:
            raise BundleError(f"{path}: {role} weights are not listed in {MANIFEST}'s files; the bundle is incomplete")
    for relative, expected in files.items():
        file_path = path / relative
        if not file_path.is_file():
            raise BundleError(f"{path}: file {relative} is missing; the bundle is incomplete, re-copy or retrain it")
        if sha256_file(file_path) != expected:
            raise BundleError(f"{path}: {relative} does not match its sha256 in {MANIFEST}; the file was modified or truncated, re-copy the bundle")
    return Bundle(path, manifest)


def load(path: Path | str | None = None, seed: int | None = 0) -> Pipeline:
    """The bundle's full defended model (RT -> purifier -> classifier) as an eval-mode module."""
    return load_bundle(path).pipeline(seed=seed)


def write_bundle(out: Path, manifest: dict[str, Any], models: dict[str, nn.Module]) -> Bundle:
    """Write a bundle atomically: build it in a staging directory, hash every file, then rename.

    ``models`` maps a role ('classifier', 'purifier') to the module whose state is saved as
    ``ROLE.safetensors`` (an imported classifier: its ONNX graph as ``ROLE.onnx``);
    ``manifest[ROLE]`` describes its architecture and config.
    """
    staged = staging_dir(out)
    try:
        manifest = {"schema_version": SCHEMA_VERSION, **manifest}
        for role, model in models.items():
            manifest[role] = dict(manifest[role], weights=_save_weights(model, staged, role))
        manifest["files"] = {file.name: sha256_file(file) for file in sorted(staged.iterdir()) if file.is_file()}
        atomic_write_json(staged / MANIFEST, manifest)
        publish_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return load_bundle(out)


def _save_weights(model: nn.Module, directory: Path, role: str) -> str:
    """Write ``model``'s weights into ``directory``; the file's name."""
    if isinstance(model, ImportedClassifier):
        (directory / f"{role}.onnx").write_bytes(model.graph)
        return f"{role}.onnx"
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    save_file(state, str(directory / f"{role}.safetensors"))
    return f"{role}.safetensors"


def update_manifest(bundle: Bundle, edit: Callable[[dict[str, Any]], None], new_files: list[str] = ()) -> Bundle:
    """Apply ``edit`` to bundle.json as it is on disk now, hash ``new_files`` (paths relative to the bundle).

    The read-edit-write runs under an exclusive lock on the bundle directory, so two jobs that
    record into one bundle (an evaluation's --record, a quantization) never lose each other's
    records, however long each ran since it loaded the bundle."""
    directory = os.open(bundle.path, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        manifest = json.loads((bundle.path / MANIFEST).read_text())
        edit(manifest)
        manifest["files"] = dict(manifest["files"], **{name: sha256_file(bundle.path / name) for name in new_files})
        atomic_write_json(bundle.path / MANIFEST, manifest)
    finally:
        os.close(directory)  # releases the lock
    return load_bundle(bundle.path)


def compose_bundle(purifier_from: Path | str, classifier_from: Path | str, out: Path | str, command: str | None = None) -> Bundle:
    """A new bundle: one bundle's purifier (with its random transform) in front of another's classifier, not retrained.

    Both must share the data set's input shape and classes. Metrics are left for ``purifier evaluate``.
    """
    with_purifier, with_classifier = load_bundle(purifier_from), load_bundle(classifier_from)
    if not with_purifier.has_purifier:
        raise BundleError(f"{purifier_from} has no purifier; pass a bundle written by 'purifier train purifier|atop|jatp'")
    classifier, purifier = with_classifier.classifier(), with_purifier.purifier()
    if (with_purifier.input_shape, with_purifier.class_names) != (with_classifier.input_shape, with_classifier.class_names):
        raise BundleError(f"{purifier_from} and {classifier_from} were trained on different data (input shape or classes differ)")
    record = {"stage": "compose", "command": command, "arguments": {"purifier": str(purifier_from), "classifier": str(classifier_from)}, "wall_time_s": 0.0}
    purifier_entry = {key: value for key, value in with_purifier.manifest["purifier"].items() if key != "weights"}
    classifier_entry = {key: value for key, value in with_classifier.manifest["classifier"].items() if key != "weights"}
    manifest = {
        "name": Path(out).name, "dataset": with_classifier.manifest["dataset"], "classifier": classifier_entry, "purifier": purifier_entry,
        "training": with_classifier.training_records("classifier") + with_purifier.training_records("purifier") + [record], "metrics": {},
    }
    return write_bundle(out, manifest, {"classifier": classifier, "purifier": purifier})
