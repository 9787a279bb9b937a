"""`qmed ablate` (Table II ladder + ablations) and `qmed curve` (data efficiency): row configurations,
tiny end-to-end runs on 6 train / 3 val real images (a few seconds of training per row), bad input."""

import json

import pytest
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.config import resolve_config
from qmed.errors import QmedInputError
from qmed.experiments.ablate import ROWS, row_config, select_rows
from qmed.experiments.common import smp_baseline_config
from qmed.experiments.curve import parse_fractions, subset_sizes
from qmed.models.segmenter import build
from qmed.segment import crf

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_every_row_has_a_valid_config_and_model():
    recipe = resolve_config("tiny")
    cfgs = {r.name: row_config(r, "tiny", {}) for r in ROWS}
    for cfg in cfgs.values():
        build(cfg.model, pretrained=False)  # every row's network builds
    strip = lambda c: c.model_dump(exclude={"name"})  # noqa: E731
    assert (
        strip(cfgs["enhanced"]) == strip(recipe) == strip(cfgs["no_tta"])
    )  # Enhanced is the preset, shared with no_tta
    assert cfgs["no_edge"].model.input_mode == "none" and cfgs["stem4"].model.input_mode == "stem4"
    assert cfgs["uniform_sampler"].data.sampler == "uniform"
    assert {cfgs["other_loss"].train.loss, recipe.train.loss} == {"stabilized", "dice_bce"}
    ladder = ["unet_dice", "attention_unet", "attention_unet_hybrid", "mc_dropout_al", "ms_attention_unet"]
    assert [cfgs[n].model.arch for n in ladder] == [
        "unet",
        "attention_unet",
        "attention_unet",
        "attention_unet",
        "ms_attention_unet",
    ]
    assert [cfgs[n].train.loss for n in ladder] == ["dice", "dice", "hybrid", "hybrid", "hybrid"]
    assert all(
        cfgs[n].model.input_mode == "none" and cfgs[n].train.schedule == "constant" for n in ladder
    )  # the plain smp base
    assert cfgs["mc_dropout_al"].model.dropout > 0
    assert cfgs["hq_unet_classical"].model.hq.core == "classical" and cfgs["hq_unet"].model.hq.core == "quantum"
    # --set reaches every row, the rows' own switches win
    over = {"data": {"crop": 96}, "model": {"input_mode": "stem4"}}
    assert (
        row_config(ROWS[0], "tiny", over).data.crop == 96
        and row_config(ROWS[0], "tiny", over).model.input_mode == "none"
    )
    # every row trains in the preset's precision, the plain-baseline rows included
    cpu_rows = {r.name: row_config(r, "cpu", {}) for r in ROWS}
    assert resolve_config("cpu").train.cpu_bf16 and all(c.train.cpu_bf16 for c in cpu_rows.values())
    assert not smp_baseline_config("cpu").train.cpu_bf16  # `qmed benchmark quality`'s plain smp stays float32
    # --smp-bf16, the precision control: the same plain script with bfloat16 autocast, nothing else changed
    b = smp_baseline_config("cpu", {"train": {"seed": 3}}, bf16=True)
    p = smp_baseline_config("cpu", {"train": {"seed": 3}})
    assert b.train.cpu_bf16 and b.train.seed == 3
    assert (
        b.model_dump()["train"] | {"cpu_bf16": False} == p.model_dump()["train"]
        and b.model == p.model
        and b.augment == p.augment
    )


def test_select_rows():
    assert [r.name for r in select_rows("ladder")] == [
        "unet_dice",
        "attention_unet",
        "attention_unet_hybrid",
        "mc_dropout_al",
        "ms_attention_unet",
        "enhanced",
    ]
    assert len(select_rows("ladder,ablations")) == 11 and len(select_rows("all")) == len(ROWS)
    assert [r.name for r in select_rows("no_tta, hq")] == ["no_tta", "hq_unet", "hq_unet_classical"]
    with pytest.raises(QmedInputError, match="unknown bogus"):
        select_rows("ladder,bogus")


def test_curve_fractions_and_sizes():
    assert parse_fractions("1,0.1,0.25") == [0.1, 0.25, 1.0]
    assert subset_sizes(6, [0.1, 0.15, 0.5, 1.0]) == [(0.1, 1), (0.5, 3), (1.0, 6)]  # 0.15 -> 1 image again: skipped
    for bad in ("0", "a,b", "1.5", "", "nan"):
        with pytest.raises(QmedInputError):
            parse_fractions(bad)


def test_ablate_tiny_run_prints_the_complete_table(fluo_subset, tmp_path):
    rows = ["mc_dropout_al", "ms_attention_unet", "enhanced", "no_tta"]
    out = tmp_path / "ablate"
    res = run(
        "ablate",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--budget",
        0.05,
        "--preset",
        "tiny",
        "--only",
        ",".join(rows),
        "--n-boot",
        100,
        "--al-rounds",
        2,
        "--mc-passes",
        2,
        "--set",
        "predict.tta=2",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "ablate.json").read_text())
    assert doc["finished"] and [r["method"] for r in doc["results"]] == rows
    by = {r["method"]: r for r in doc["results"]}
    for name, r in by.items():
        assert r["status"] == "ok", (name, r.get("reason"))
        assert name in res.output
        for key in ("dice_empty1", "dice_pooled", "iou_fg", "hd95", "boundary_f1", "small_object_recall"):
            assert key in r["figures"], (name, key)
        assert 0.0 <= r["figures"]["dice_empty1"]["mean"] <= 1.0
    assert by["enhanced"]["paper_dice"] == 0.955 and "0.955" in res.output and "0.853" in res.output
    assert (
        by["no_tta"]["shared_training_with"] == "enhanced" and by["no_tta"]["tta"] == 1 and by["enhanced"]["tta"] == 2
    )
    hist = by["mc_dropout_al"]["active_learning"]["history"]
    assert [h["n_labelled"] for h in hist] == [2, 3] and len(hist[0]["selected"]) == 1  # 40 % of 6, then + 20 %
    assert by["ms_attention_unet"]["crf"] is crf.available()
    md = (out / "ablate.md").read_text()
    assert all(r["label"] in md for r in by.values()) and md.count("\n| ") == len(rows) + 1


def test_ablate_bad_input_is_one_line(fluo_subset, tmp_path):
    base = [
        "ablate",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        tmp_path / "a",
        "--preset",
        "tiny",
    ]
    for extra, msg in (
        (["--budget", 0], "--budget"),
        (["--only", "ladder,nope"], "unknown nope"),
        (["--al-start", 2], "--al-start"),
        (["--set", "model.arch=resnet"], "model.arch"),
        (["--preset", "nope"], "unknown preset"),
    ):
        res = run(*base, *extra)
        assert res.exit_code == 2 and msg in res.output and res.output.count("\n") == 1, (extra, res.output)
    res = run(
        "ablate",
        "--data",
        tmp_path / "missing",
        "--val",
        fluo_subset["val"],
        "--out",
        tmp_path / "b",
        "--preset",
        "tiny",
    )
    assert res.exit_code == 2 and "does not exist" in res.output
    assert (
        not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    )  # nothing written before the input is checked


def test_curve_tiny_run(fluo_subset, tmp_path):
    out = tmp_path / "curve"
    res = run(
        "curve",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--fractions",
        "0.5,1",
        "--budget",
        0.05,
        "--preset",
        "tiny",
        "--n-boot",
        100,
        "--set",
        "predict.tta=2",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "curve.json").read_text())
    assert [(r["series"], r["n_images"]) for r in doc["results"]] == [("qmed", 3), ("smp", 3), ("qmed", 6), ("smp", 6)]
    assert all(r["status"] == "ok" and 0 <= r["figures"]["dice_empty1"]["mean"] <= 1 for r in doc["results"])
    assert doc["results"][1]["config"]["train"]["schedule"] == "constant"  # the plain smp baseline
    assert (out / "subsets" / "n3.csv").read_text().count("\n") == 4  # header + 3 images
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curve.md").read_text().count("\n| ") == 5
    res = run(
        "curve",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        tmp_path / "c",
        "--fractions",
        "0,2",
    )
    assert res.exit_code == 2 and "--fractions" in res.output
