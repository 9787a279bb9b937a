"""`qmed benchmark speed` and `qmed benchmark quality` (small runs), and their budget arithmetic."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from qmed import runtime as precision
from qmed.cli.app import app
from qmed.experiments import nnunet_peer
from qmed.experiments import quality as bench_quality
from qmed.experiments.quality import run_quality
from qmed.experiments.speed import PeakMemory, speed_rows
from qmed.segment.budget import plan_budget

runner = CliRunner()
HAVE_NNUNET = importlib.util.find_spec("nnunetv2") is not None


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_plan_budget_fills_and_respects_the_budget():
    p = plan_budget(1800, t_micro=1.2, t_val=20.0, batch_size=4, accumulate=2, max_epochs=10)
    assert p["epochs"] == 10
    assert p["samples_per_epoch"] % 8 == 0  # whole optimizer steps of 2 x 4 crops
    assert 0.9 * 1800 <= p["estimated_seconds"] <= 1800
    # validation that would eat the budget: fewer epochs, each still with an optimizer step
    p = plan_budget(60, t_micro=1.0, t_val=30.0, batch_size=4, accumulate=2, max_epochs=10)
    assert p["epochs"] == 1 and p["micro_steps_per_epoch"] >= 2
    # never more epochs than the preset asks for
    assert plan_budget(10**6, 0.1, 0.1, 4, 1, 7)["epochs"] == 7


@pytest.mark.skipif(not HAVE_NNUNET, reason="nnunetv2 is not installed (pip install 'qmed[peers]')")
def test_nnunet_budget_trainer_plan():
    spec = importlib.util.spec_from_file_location(
        "qmed_nnunet_trainers", nnunet_peer.TRAINER_DIR / "qmed_nnunet_trainers.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    iters, val_iters, epochs = mod.plan_epochs(1800, t_iter=2.0, min_epochs=10)
    assert iters <= 250 and epochs >= 10 and val_iters == max(1, round(iters / 5))
    assert epochs * (iters * 2.0 + val_iters * 2.0 * mod.VAL_COST + mod.EPOCH_OVERHEAD_S) <= 1800
    assert mod.plan_epochs(10**6, 0.01, 10)[0] == 250  # long budgets: stock epochs of 250 iterations


def test_peak_memory_cpu():
    import torch

    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(32 * 2**20 // 4)  # 32 MiB
        x += 1
    assert mem.peak_mb >= mem.start_mb > 0
    if mem.method == "VmHWM":
        assert mem.peak_mb - mem.start_mb >= 16


def test_speed_tiny_prints_all_rows(tmp_path):
    out = tmp_path / "speed.json"
    res = run("benchmark", "speed", "--preset", "tiny", "--size", 64, "--steps", 2, "--json", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    for key in (
        "data_bare",
        "data_recipe",
        "train_compute_bare",
        "train_compute_recipe",
        "edge",
        "projection",
        "loss_bare",
        "loss_recipe",
        "infer_bare",
        "infer_recipe",
        "infer_recipe_tta",
    ):
        assert doc["phases"][key]["ms"] > 0, key
    assert doc["phases"]["infer_recipe_tta"]["views"] == 7
    assert set(doc["overhead"]) == {"edge", "projection", "data", "loss", "rest"}
    assert doc["recipe_over_bare"] > 0 and doc["memory"]["method"] in ("VmHWM", "ru_maxrss")
    assert doc["phases"]["train_compute_recipe"]["peak_mb"] > 0
    rows = speed_rows(doc)
    assert len(rows) == 13
    for label, *_ in rows:
        assert label.strip().split(" ")[0] in res.output  # rich may wrap long labels; each row is there
    assert "recipe / bare step" in res.output


def test_speed_channels_last_on_cpu(tmp_path):
    """The GPU preset's --channels-last path, run on the CPU (AMP itself needs CUDA)."""
    out = tmp_path / "speed.json"
    res = run("benchmark", "speed", "--preset", "tiny", "--size", 64, "--steps", 1, "--channels-last", "--json", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["channels_last"] is True
    assert doc["recipe_over_bare"] > 0


def test_speed_refuses_bad_options():
    assert run("benchmark", "speed", "--preset", "tiny", "--size", 50).exit_code == 2
    assert (
        run("benchmark", "quality", "--data", "x", "--val", "y", "--out", "z", "--methods", "qmed,monai").exit_code == 2
    )


def test_speed_amp_on_cpu_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    res = run("benchmark", "speed", "--preset", "tiny", "--size", 64, "--amp")
    assert res.exit_code == 2 and "native bfloat16" in res.output


@pytest.mark.skipif(not precision.cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")
def test_speed_amp_on_cpu_with_native_bf16(tmp_path):
    out = tmp_path / "speed.json"
    res = run(
        "benchmark", "speed", "--preset", "tiny", "--size", 64, "--steps", 1, "--amp", "--channels-last", "--json", out
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["settings"]["amp"] is True


def test_quality_failing_method_gets_a_row(fluo_subset, tmp_path, monkeypatch):
    """A method that cannot run (no nnunetv2) or crashes gets a row with the reason; nothing is raised."""
    monkeypatch.setattr(nnunet_peer, "nnunet_status", lambda: (False, "nnunetv2 is not installed (test)"))

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(bench_quality, "train_to_budget", boom)
    doc = run_quality(
        fluo_subset["train"],
        fluo_subset["val"],
        tmp_path / "q",
        minutes=0.1,
        methods=["qmed", "nnunet"],
        n_boot=10,
        say=lambda m: None,
    )
    rows = {r["method"]: r for r in doc["results"]}
    assert rows["qmed"]["status"] == "failed" and "simulated crash" in rows["qmed"]["reason"]
    assert rows["nnunet"]["status"] == "skipped" and "not installed" in rows["nnunet"]["reason"]
    assert (tmp_path / "q" / "qmed" / "error.txt").is_file()
    assert "simulated crash" in (tmp_path / "q" / "quality.md").read_text()


def test_quality_one_minute_all_methods(fluo_subset, tmp_path):
    """Half a minute of training per method (1.5 min in all) on 6 train / 3 val real images."""
    out = tmp_path / "quality"
    res = run(
        "benchmark",
        "quality",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--minutes",
        0.5,
        "--n-boot",
        100,
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "quality.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert list(rows) == ["qmed", "qmed-notta", "smp", "nnunet"]
    for m in ("qmed", "qmed-notta", "smp"):
        assert rows[m]["status"] == "ok", rows[m].get("reason")
        f = rows[m]["figures"]
        for key in ("dice_empty1", "dice_fg", "dice_pooled", "iou_fg", "hd95", "small_object_recall"):
            assert key in f
        assert 0.0 <= f["dice_empty1"]["mean"] <= 1.0
        for key in ("map_dsb", "pq", "aji", "count_abs_error"):  # the object figures
            assert f[key]["n"] == 3 and (f[key]["mean"] >= 0.0)
        assert f["objects"] == ("connected components" if m == "smp" else "watershed (qmed predict --instances)")
        assert (
            rows[m]["train_seconds"] <= 3 * 0.5 * 60 + 60
        )  # the budget, calibration included (loose: shared machines)
    assert rows["smp"]["config"]["model"]["input_mode"] == "none"
    assert rows["smp"]["config"]["train"]["schedule"] == "constant"
    for m in ("qmed", "smp", "nnunet"):
        assert m in res.output
    md = (out / "quality.md").read_text()
    assert md.count("\n| ") >= 4  # header + rows
    assert "mean AP" in md and "watershed" in md
    assert len(list((out / "qmed" / "preds-tta" / "instances").glob("*.png"))) == 3
    if not HAVE_NNUNET:
        assert rows["nnunet"]["status"] == "skipped" and "not installed" in rows["nnunet"]["reason"]
        pytest.skip("nnunetv2 is not installed: the nnU-Net row was checked as 'skipped' only")
    assert rows["nnunet"]["status"] == "ok", rows["nnunet"].get("reason")
    assert 0.0 <= rows["nnunet"]["figures"]["dice_empty1"]["mean"] <= 1.0
    assert rows["nnunet"]["nnunet"]["epochs"] >= 1


def test_quality_set_changes_qmed_row_only(fluo_subset):
    """`benchmark quality --set` reaches qmed's settings (preset or auto) and drops the planner's reason."""
    cfg = bench_quality.qmed_default("tiny", fluo_subset["train"], ["train.accumulate=3", "model.input_mode=none"])
    assert cfg.train.accumulate == 3 and cfg.model.input_mode == "none"
    auto = bench_quality.qmed_default("auto", fluo_subset["train"], ["data.sampler=uniform"])
    assert auto.data.sampler == "uniform" and "data.sampler" not in auto.reasons
    assert bench_quality.qmed_default("auto", fluo_subset["train"]).reasons.get("data.sampler")


def test_quality_qmed_no_val_trains_on_the_data_alone(fluo_subset, tmp_path):
    """--qmed-no-val: qmed's run never sees --val (all 6 images train with data.val_fraction=0); --val only scores."""
    out = tmp_path / "q"
    res = run(
        "benchmark",
        "quality",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--minutes",
        0.1,
        "--methods",
        "qmed",
        "--preset",
        "tiny",
        "--n-boot",
        100,
        "--qmed-no-val",
        "--set",
        "data.val_fraction=0",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "quality.json").read_text())
    assert doc["settings"]["qmed_trained_with_val"] is False
    meta = json.loads((out / "qmed" / "run" / "run.json").read_text())
    assert meta["val"] is None and meta["val_split"] == []
    row = next(r for r in doc["results"] if r["method"] == "qmed")
    assert row["status"] == "ok" and row["figures"]["dice_empty1"]["n"] == 3  # scored on the 3 val images
