"""Training CLI: bundles with records, resume after a kill, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from purifier.bundle import load_bundle
from purifier.errors import PurifierError
from purifier.images import encode_png
from training.checkpoint import load_checkpoint, save_checkpoint
from training.classifier import ClassifierConfig, train_classifier
from training.common import checkpoint_dir_for
from training.loop import Epoch, TrainState, run_epochs
from training.precision import has_bf16_units

PURIFIER = [sys.executable, "-m", "cli.main"]


def test_classifier_bundle_records_command_and_metrics(tmp_path):
    bundle = train_classifier(ClassifierConfig(out=tmp_path / "clf", epochs=1, limit=600, command="purifier train classifier ..."))
    record = bundle.manifest["training"][0]
    assert record["command"] == "purifier train classifier ..." and record["epochs"] == 1 and record["wall_time_s"] > 0
    assert bundle.manifest["metrics"]["clean_accuracy_classifier"]["protocol"] == {"split": "test", "images": 10000}
    assert not checkpoint_dir_for(tmp_path / "clf").exists()


def test_checkpoint_of_other_arguments_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"fingerprint": {"lr": 0.05, "epochs": 3}, "epoch": 1})
    assert load_checkpoint(tmp_path, {"lr": 0.05, "epochs": 3})["epoch"] == 1
    with pytest.raises(PurifierError, match="different arguments \\(lr\\).*--restart"):
        load_checkpoint(tmp_path, {"lr": 0.01, "epochs": 3})
    # an option added after the checkpoint was written resumes it at its default, and only there
    assert load_checkpoint(tmp_path, {"lr": 0.05, "epochs": 3, "queries": 0}, defaults={"queries": 0, "lr": 0.1})["epoch"] == 1
    with pytest.raises(PurifierError, match="different arguments \\(queries\\)"):
        load_checkpoint(tmp_path, {"lr": 0.05, "epochs": 3, "queries": 100}, defaults={"queries": 0})
    # a speed setting the checkpoint recorded but fingerprints now leave out (precision) is not compared
    save_checkpoint(tmp_path, {"fingerprint": {"lr": 0.05, "precision": "bf16"}, "epoch": 2})
    assert load_checkpoint(tmp_path, {"lr": 0.05})["epoch"] == 2


def test_a_run_resumes_in_another_precision_and_its_history_says_which_epoch_ran_in_which(tmp_path):
    def state():
        model = nn.Linear(2, 1)
        return TrainState({"model": model}, {"model": torch.optim.SGD(model.parameters(), lr=0.1)})

    def train_epoch(epoch):
        return {"loss": 1.0 / (epoch + 1)}

    # a checkpoint written before the precision left the fingerprint: its untagged epochs ran in the precision it recorded
    old = state()
    old.epoch, old.history = 1, [{"epoch": 1, "loss": 1.0}]
    save_checkpoint(tmp_path, old.state_dict({"lr": 0.1, "precision": "bf16"}))
    resumed = run_epochs(state(), 2, train_epoch, tmp_path, {"lr": 0.1}, settings={"precision": "fp32"})
    run_epochs(state(), 3, train_epoch, tmp_path, {"lr": 0.1}, settings={"precision": "bf16"})
    history = load_checkpoint(tmp_path, {"lr": 0.1})["history"]
    assert [entry["precision"] for entry in resumed.history] == ["bf16", "fp32"]
    assert [(entry["epoch"], entry["precision"]) for entry in history] == [(1, "bf16"), (2, "fp32"), (3, "bf16")]


def _toy_trainer(stop_at_step: int | None = None, streams: bool = True):
    """A linear model trained on 40 points in batches of 8 (5 steps an epoch) with noise from the epoch's torch generator and
    from a numpy stream; ``stop_at_step`` raises in the middle of that step, after its weight update."""
    data = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    model = nn.Linear(3, 1)
    nn.init.constant_(model.weight, 0.1), nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    state, steps = TrainState({"model": model}, {"model": optimizer}), []

    def train_epoch(epoch):
        stream = np.random.default_rng([0, epoch])
        run = Epoch(state, len(data), 8, 0, "toy", streams={"noise": stream} if streams else None)
        for index in run:
            noise = torch.from_numpy(stream.normal(size=(len(index), 3)).astype(np.float32))
            loss = model(data[index] + noise + torch.randn(len(index), 3, generator=run.generator)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.record(len(index), loss=loss.item())
            steps.append(loss.item())
            if len(steps) == stop_at_step:
                raise KeyboardInterrupt
        return run.means()

    return state, train_epoch


def test_a_run_stopped_within_an_epoch_resumes_at_its_batch_and_replays_exactly(tmp_path):
    def train(directory, **trainer):
        state, train_epoch = _toy_trainer(**trainer)
        return run_epochs(state, 2, train_epoch, tmp_path / directory, {}, every_s=0)

    straight = train("straight")
    with pytest.raises(KeyboardInterrupt):  # in the 2nd step of epoch 2, after its update: the checkpoint has 1 batch of it
        train("stopped", stop_at_step=7)
    assert load_checkpoint(tmp_path / "stopped", {})["within_epoch"]["batches"] == 1
    with pytest.raises(PurifierError, match="other random streams \\(noise\\).*--restart"):
        train("stopped", streams=False)
    resumed = train("stopped")
    assert torch.equal(resumed.modules["model"].weight, straight.modules["model"].weight)
    assert resumed.history == straight.history  # the resumed epoch's running means include the batches before the stop


def test_bf16_units_are_read_off_the_cpu_flags():
    assert has_bf16_units({"amx_bf16": True, "avx512f": True}) and has_bf16_units({"avx512_bf16": True})
    assert not has_bf16_units({"avx512f": True, "avx512_vnni": True}) and not has_bf16_units({})


def _run(args, **kwargs):
    return subprocess.run(PURIFIER + args, capture_output=True, text=True, **kwargs)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    common = ["train", "classifier", "--epochs", "3", "--limit", "6000", "--widths", "8,16,32"]
    reference = _run(common + ["--out", str(tmp_path / "straight")])
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"  # checkpointed after every batch, so it is killed within its first epoch
    process = subprocess.Popen(PURIFIER + common + ["--out", str(out), "--checkpoint-every-min", "0"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = checkpoint_dir_for(out) / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not out.exists(), "the run must be killed after its first checkpoint, before it finished"

    resumed = _run(common + ["--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "of epoch 1" in resumed.stderr
    straight, again = load_file(tmp_path / "straight" / "classifier.safetensors"), load_file(out / "classifier.safetensors")
    assert all((straight[k] == again[k]).all() for k in straight)
    assert load_bundle(out).manifest["training"][0]["epochs"] == 3


def test_missing_data_is_one_line_with_the_fix(tmp_path):
    result = _run(["train", "classifier", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dataset-fashion-mnist" in result.stderr
    assert not (tmp_path / "x").exists()


def test_counts_below_one_and_negative_minutes_are_refused_before_anything_is_written(tmp_path):
    for option, value, error in (("--limit", "0", "must be 1 or more, got 0"), ("--test-limit", "0", "must be 1 or more, got 0"),
                                 ("--checkpoint-every-min", "-1", "must be 0 or more minutes, got -1")):
        result = _run(["train", "classifier", option, value, "--out", str(tmp_path / "x")])
        assert result.returncode == 2 and f"{option}: {error}" in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_widths_that_crash_onednn_on_avx2_are_refused_with_the_fix(tmp_path):
    result = _run(["train", "classifier", "--widths", "4,8,8", "--out", str(tmp_path / "x")])
    assert result.returncode == 2 and "use 8 or more" in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_trains_on_users_own_image_folder(tmp_path, fmnist_test):
    for index in range(60):
        folder = tmp_path / "images" / "train" / fmnist_test.class_names[fmnist_test.labels[index]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.png").write_bytes(encode_png(fmnist_test.images[index]))
    result = _run(["train", "classifier", "--dataset", "folder", "--data-dir", str(tmp_path / "images"), "--epochs", "1", "--out", str(tmp_path / "mine")])
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(tmp_path / "mine")
    assert bundle.manifest["dataset"]["name"] == "folder:images" and len(bundle.class_names) == len({fmnist_test.labels[i] for i in range(60)})
    result = _run(["train", "purifier", "--classifier", str(tmp_path / "mine"), "--data-dir", str(tmp_path / "images"), "--epochs", "1", "--out", str(tmp_path / "mine-pur")])
    assert result.returncode == 0, result.stderr
    assert load_bundle(tmp_path / "mine-pur").has_purifier


def test_rerunning_a_finished_training_changes_nothing_unless_restarted(tmp_path):
    command = ["train", "classifier", "--epochs", "1", "--limit", "300", "--widths", "8,16,16", "--precision", "auto", "--out", str(tmp_path / "clf")]
    assert _run(command).returncode == 0
    manifest = (tmp_path / "clf" / "bundle.json").read_bytes()
    native = "bf16" if has_bf16_units() else "fp32"
    assert load_bundle(tmp_path / "clf").manifest["training"][0]["history"][0]["precision"] == native
    again = _run(command)
    assert again.returncode == 0 and "is complete" in again.stdout and (tmp_path / "clf" / "bundle.json").read_bytes() == manifest
    other_precision = _run([*command[:-4], "--precision", "fp32" if native == "bf16" else "bf16", *command[-2:]])
    assert "is complete" in other_precision.stdout, "precision is a speed setting: it must not count as other settings"
    other = _run(command[:-2] + ["--lr", "0.01", "--out", str(tmp_path / "clf")])
    assert other.returncode == 2 and "other settings (lr)" in other.stderr
    restarted = _run(command + ["--restart"])
    assert restarted.returncode == 0 and "wrote bundle" in restarted.stdout


def test_bf16_training_reaches_the_fp32_accuracy(tmp_path, capsys):
    """The same smoke run in fp32 and under bf16 autocast (fp32 master weights): test accuracy within 2 points; bf16
    warns exactly where the CPU would emulate it. A narrow ResNet, so that the emulated bf16 of AVX2 CPUs takes seconds."""
    accuracy = {}
    for precision in ("fp32", "bf16"):
        bundle = train_classifier(ClassifierConfig(out=tmp_path / precision, epochs=1, limit=6000, widths=(8, 16, 32), precision=precision,
                                                   command="test"))
        accuracy[precision] = bundle.manifest["metrics"]["clean_accuracy_classifier"]["value"]
    assert accuracy["fp32"] > 0.6 and abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.02, accuracy
    assert ("no bf16 matrix units" in capsys.readouterr().err) != has_bf16_units()


def test_classifier_validation_bundles_the_epoch_with_the_best_held_out_robust_accuracy(tmp_path):
    from evaluation.accuracy import robust_accuracy

    bundle = train_classifier(ClassifierConfig(out=tmp_path / "selected", method="fgsm_rs", eps=0.03, epochs=3, limit=768, validate=256,
                                               validate_queries=100, widths=(8, 16, 32), command="test"))
    scores = [epoch["robust_validation"] for epoch in bundle.manifest["training"][0]["history"]]
    assert len(scores) == 3 and all(0 <= score <= 1 for score in scores)
    held_images, held_labels = load_bundle(bundle.path).data("train").head(768).tensors()  # the last 256 of the first 768 were held out
    again = robust_accuracy(bundle.classifier().eval(), held_images[-256:], held_labels[-256:], 0.03, steps=10, eot=1, draws=1, seed=0,
                            queries=100)
    assert again == pytest.approx(max(scores), abs=1e-5)  # the bundle holds the best epoch's weights (history rounds to 5 digits)
    with pytest.raises(PurifierError, match="half or more"):
        train_classifier(ClassifierConfig(out=tmp_path / "x", epochs=1, limit=100, validate=50, command="test"))
    with pytest.raises(ValueError, match="pass --validate too"):
        ClassifierConfig(out=tmp_path / "x", validate_queries=100)
