"""Faults: NaN injected into training, and a training process killed mid-epoch then resumed."""

import csv
import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from qmed.config import resolve_config
from qmed.io import checkpoints as checkpoint
from qmed.segment.train import train


def _nan_losses(monkeypatch, calls: set[int]) -> None:
    """Make the trainer's loss non-finite at the chosen training micro-batches (counted over the run, from 0)."""
    import itertools

    import qmed.segment.train as train_module

    real = train_module.loss_from_config

    def faulty_loss_from_config(*args, **kwargs):
        loss_fn = real(*args, **kwargs)
        forward, n = loss_fn.forward, itertools.count()

        def faulty(*a, **k):
            loss = forward(*a, **k)
            return loss * float("nan") if next(n) in calls else loss

        loss_fn.forward = faulty
        return loss_fn

    monkeypatch.setattr(train_module, "loss_from_config", faulty_loss_from_config)


def test_nan_injection_recovers(fluo_subset, tmp_path, monkeypatch):
    # Six non-finite losses in a row in epoch 2 (max_bad_steps 5): steps are skipped, then the last
    # accepted weights are restored with a lower learning rate, and the run finishes.
    cfg = resolve_config("tiny", overrides={"train": {"epochs": 3}, "data": {"samples_per_epoch": 16}})
    micro = cfg.data.samples_per_epoch // cfg.train.batch_size
    _nan_losses(monkeypatch, {micro + i for i in range(6)})
    run = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3
    assert int(rows[1]["bad_steps"]) >= 5
    assert "restored the last accepted weights" in rows[1]["restored"]
    state = checkpoint.read(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["run"]["lr_scale"] == 0.5
    log = (run / "train.log").read_text()
    assert "non-finite steps in a row" in log


def _files_intact(run):
    for p in run.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix == ".pt":
            checkpoint.read(p)
        elif p.suffix == ".csv":
            rows = list(csv.DictReader(open(p)))
            assert all(len(r) == len(rows[0]) for r in rows)
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".json":
            import json

            json.loads(p.read_text())


def test_sigkill_mid_epoch_then_resume(fluo_subset, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "qmed.cli",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(fluo_subset["train"]),
        "--val",
        str(fluo_subset["val"]),
        "--out",
        str(run),
        "--quiet",
        "--no-report",
        "--set",
        "train.epochs=3",
        "--set",
        "data.samples_per_epoch=64",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
        time.sleep(1.0)  # well into epoch 2
        assert proc.poll() is None, "run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    _files_intact(run)
    done = checkpoint.read(run / "checkpoints" / "last.pt")["run"]["epoch"]
    assert done in (1, 2)
    res = subprocess.run(
        [sys.executable, "-m", "qmed.cli", "train", "--resume", str(run), "--quiet", "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    _files_intact(run)
    assert not [p for p in run.rglob(".*") if ".tmp" in p.name]
