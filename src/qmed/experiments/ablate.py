"""`qmed ablate`: Table II of arXiv 2512.02302 (SPEC S13) and the Enhanced recipe's component
ablations, re-run on your data at one training budget per row and scored by `qmed evaluate` on VAL.

Rows (`--only` takes row names and the group names ladder, ablations, hq, all):

ladder (the paper's progression; its Dice, on its breast-cell data, is printed beside each rung
for reference only). Rungs 1-5 start from the plain smp baseline of `qmed benchmark quality`
(SMP_BASELINE: the preset's encoder and weights, 3-channel input, Adam 1e-3 constant, uniform
sampling, flips/rotations only, no TTA) and change what the paper names:
  unet_dice              smp U-Net (no SCSE) + soft Dice loss
  attention_unet         Attention U-Net (`qmed.models.ladder`) + Dice
  attention_unet_hybrid  + the hybrid loss 0.5 Dice + 0.3 Focal + 0.2 Boundary (`qmed.segment.losses`)
  mc_dropout_al          the same with Dropout2d 0.2, trained by MC-Dropout active learning
                         (`qmed.experiments.active`): the budget is split over its rounds, and the final model
                         has seen only part of the labels (as the paper's rung, which scored lower)
  ms_attention_unet      ASPP + SE multi-scale Attention U-Net, hybrid loss, patch sampling
                         (crops centred on foreground with p 0.5, `data.fg_crop_p`) and dense-CRF
                         post-processing when pydensecrf is installed (`qmed.segment.crf`; else the row
                         says "CRF unavailable")
  enhanced               the preset itself (the qmed recipe), predicted with its TTA
ablations (each the Enhanced recipe with one part switched):
  no_edge                model.input_mode none: no edge channel (= dropping the 4th channel)
  stem4                  model.input_mode stem4: smp's 4-channel first convolution instead of the projection
  uniform_sampler        data.sampler uniform instead of the preset's weighted sampler (paper:
                         complexity weights; cpu: hard-image mining)
  other_loss             the loss the preset does not use: stabilised (Algorithm 1) <-> Dice + BCE
  no_tta                 the Enhanced model predicted without TTA (no training of its own)
hq (SPEC Q4, not run by default):
  hq_unet                smp U-Net with the PQC at every bottleneck position (`qmed.models.hq_unet`)
  hq_unet_classical      its equal-size classical twin (the circuit replaced by a small MLP)

Every row trains with `qmed.experiments.common.train_to_budget` (budget-fitted epochs; the budget is the
training loop's wall-clock time) and is scored with `qmed.experiments.common.score`: per-image Dice (empty
= 1 and foreground-only) with bootstrap CIs, pooled Dice with its CI, IoU, HD95, boundary F1,
small-object recall. Rows sharing a configuration share one training (Enhanced and no_tta).
`--set` changes the preset under every row; the rows' own switches are applied on top. A row
that fails gets its reason in the table and the others still run. OUT/ablate.json (rewritten
after every row) and OUT/ablate.md are written atomically; one folder per row under OUT.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qmed.config import QmedConfig, config_from_dict, deep_merge, parse_overrides, resolve_config
from qmed.errors import QmedInputError
from qmed.experiments.common import (
    result_document,
    run_guarded,
    settings_sentence,
    smp_baseline_config,
    train_to_budget,
)
from qmed.io.files import json_safe, prepare_output_dir, write_json, write_text
from qmed.report.tables import MD_FIGURES, compact_table, md_figures, md_table, status_text
from qmed.runtime import pick_device

Switches = dict | Callable[[QmedConfig], dict]


def _other_loss(recipe: QmedConfig) -> dict:
    if recipe.train.loss == "stabilized":
        return {"train": {"loss": "dice_bce"}}
    return {
        "train": {"loss": "stabilized", "boundary_weight": 0.0, "dice_per_image": False}
    }  # Dice + BCE's own options


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # ladder | ablations | hq
    label: str
    base: str  # "baseline": SMP_BASELINE on the preset; "recipe": the preset
    switches: Switches = field(default_factory=dict)
    tta: bool = False
    paper: float | None = None  # Table II's Dice (%)
    active: bool = False  # trained by MC-Dropout active learning
    crf: bool = False  # dense-CRF post-processing of the predictions


ATT = {"arch": "attention_unet"}
ROWS = [
    Row(
        "unet_dice",
        "ladder",
        "U-Net + Dice loss",
        "baseline",
        {"model": {"arch": "unet", "attention": None}, "train": {"loss": "dice"}},
        paper=78.2,
    ),
    Row(
        "attention_unet", "ladder", "Attention U-Net", "baseline", {"model": ATT, "train": {"loss": "dice"}}, paper=82.4
    ),
    Row(
        "attention_unet_hybrid",
        "ladder",
        "+ hybrid loss (Dice, Focal, Boundary)",
        "baseline",
        {"model": ATT, "train": {"loss": "hybrid"}},
        paper=87.1,
    ),
    Row(
        "mc_dropout_al",
        "ladder",
        "MC-Dropout active learning",
        "baseline",
        {"model": {**ATT, "dropout": 0.2}, "train": {"loss": "hybrid"}},
        paper=85.3,
        active=True,
    ),
    Row(
        "ms_attention_unet",
        "ladder",
        "Multi-scale Att-UNet (ASPP, SE, CRF, patches)",
        "baseline",
        {"model": {"arch": "ms_attention_unet"}, "train": {"loss": "hybrid"}, "data": {"fg_crop_p": 0.5}},
        paper=89.2,
        crf=True,
    ),
    Row("enhanced", "ladder", "Enhanced (qmed recipe)", "recipe", tta=True, paper=95.5),
    Row(
        "no_edge",
        "ablations",
        "edge channel off (input_mode none)",
        "recipe",
        {"model": {"input_mode": "none"}},
        tta=True,
    ),
    Row(
        "stem4",
        "ablations",
        "smp 4-channel stem, no projection",
        "recipe",
        {"model": {"input_mode": "stem4"}},
        tta=True,
    ),
    Row(
        "uniform_sampler",
        "ablations",
        "uniform sampling instead of the preset's weighted sampler",
        "recipe",
        {"data": {"sampler": "uniform"}},
        tta=True,
    ),
    Row("other_loss", "ablations", "other loss (stabilised <-> Dice+BCE)", "recipe", _other_loss, tta=True),
    Row("no_tta", "ablations", "Enhanced without TTA", "recipe", tta=False),
    Row("hq_unet", "hq", "HQ-UNet (PQC bottleneck)", "baseline", {"model": {"arch": "hq_unet", "attention": None}}),
    Row(
        "hq_unet_classical",
        "hq",
        "HQ-UNet classical twin",
        "baseline",
        {"model": {"arch": "hq_unet", "attention": None, "hq": {"core": "classical"}}},
    ),
]
GROUPS = ("ladder", "ablations", "hq")
DEFAULT_ONLY = "ladder,ablations"


@dataclass
class ActiveSettings:
    """The MC-Dropout rung's loop (`qmed.experiments.active.run_active_learning`)."""

    start: float = 0.4
    step: float = 0.2
    rounds: int = 3
    passes: int = 8

    def __post_init__(self):
        if not (0 < self.start <= 1 and 0 < self.step <= 1 and self.rounds >= 1 and self.passes >= 2):
            raise QmedInputError(
                None,
                "active learning needs 0 < --al-start <= 1, 0 < --al-step <= 1, --al-rounds >= 1 and "
                f"--mc-passes >= 2 (got {self.start}, {self.step}, {self.rounds}, {self.passes})",
            )


def select_rows(spec: str) -> list[Row]:
    """Row and group names (comma-separated) -> rows in table order."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    by_name = {r.name: r for r in ROWS}
    bad = [n for n in names if n not in by_name and n not in GROUPS and n != "all"]
    if bad or not names:
        raise QmedInputError(
            None,
            f"--only: unknown {', '.join(bad) or '(none)'}; choose from all, {', '.join(GROUPS)}, {', '.join(by_name)}",
        )
    wanted = {r.name for r in ROWS if "all" in names or r.group in names or r.name in names}
    return [r for r in ROWS if r.name in wanted]


def row_config(row: Row, preset: str, overrides: dict) -> QmedConfig:
    recipe = resolve_config(preset, overrides=overrides)
    base = recipe
    if row.base == "baseline":
        # Every row trains in the preset's precision: at equal minutes the table compares methods,
        # not arithmetic (the plain baseline alone, in `qmed benchmark quality`, stays float32).
        base = smp_baseline_config(preset, overrides)
        base = config_from_dict(
            deep_merge(base.model_dump(), {"train": {"cpu_bf16": recipe.train.cpu_bf16}}), "qmed ablate"
        )
    switches = row.switches(base) if callable(row.switches) else row.switches
    return config_from_dict(
        deep_merge(base.model_dump(), {**switches, "name": f"ablate-{row.name}"}), f"qmed ablate row {row.name}"
    )


def _parameters(cfg: QmedConfig) -> int:
    from qmed.models.common import count_parameters
    from qmed.models.segmenter import build

    return count_parameters(build(cfg.model, pretrained=False))


def run_ablate(
    train_dir: str | Path,
    val_dir: str | Path,
    out: str | Path,
    minutes: float = 10.0,
    only: str = DEFAULT_ONLY,
    preset: str = "cpu",
    overrides: list[str] | None = None,
    device: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    active: ActiveSettings | None = None,
    force: bool = False,
    say: Callable = print,
) -> dict:
    """Train, predict and score every selected row; write OUT/ablate.json and OUT/ablate.md. Returns the JSON document."""
    from qmed.data.dataset import find_pairs
    from qmed.experiments.active import run_active_learning
    from qmed.segment import crf

    train_dir, val_dir, out = Path(train_dir), Path(val_dir), Path(out)
    if minutes <= 0:
        raise QmedInputError(None, f"--budget must be a positive number of minutes, got {minutes}")
    rows = select_rows(only)
    active = active or ActiveSettings()
    over = parse_overrides(overrides or [])
    configs = {r.name: row_config(r, preset, over) for r in rows}  # bad presets or --set fail here, before any training
    find_pairs(train_dir)
    find_pairs(val_dir)
    prepare_output_dir(out, force, inputs=[train_dir, val_dir], verb="ablate")
    budget_s = minutes * 60.0
    # Rows with the same configuration share one training; it predicts every TTA view they need.
    key = {r.name: json.dumps([configs[r.name].model_dump(exclude={"name"}), r.active], sort_keys=True) for r in rows}
    views: dict[str, set] = {}
    for r in rows:
        views.setdefault(key[r.name], set()).add(r.tta)
    trained: dict[str, tuple[str, dict]] = {}
    results: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    settings = {
        "train": str(train_dir.resolve()),
        "val": str(val_dir.resolve()),
        "minutes_per_row": minutes,
        "preset": preset,
        "overrides": list(overrides or []),
        "device": str(pick_device(device)),
        "n_boot": n_boot,
        "seed": seed,
        "active_learning": asdict(active),
        "crf_available": crf.available(),
    }
    for r in rows:
        cfg = configs[r.name]
        meta = {
            "label": r.label,
            "group": r.group,
            "paper_dice": r.paper / 100 if r.paper else None,
            "budget_minutes": minutes,
        }
        say(f"[{r.name}] {r.label}: {minutes:g} min budget")

        def run_row(r: Row = r, cfg: QmedConfig = cfg) -> list[dict]:
            k = key[r.name]
            if k not in trained:
                tta = sorted(views[k], reverse=True)
                if r.active:
                    res = run_active_learning(
                        cfg,
                        train_dir,
                        val_dir,
                        out / r.name,
                        budget_s,
                        device,
                        tta,
                        say,
                        start=active.start,
                        step=active.step,
                        rounds=active.rounds,
                        passes=active.passes,
                        seed=seed,
                    )
                else:
                    res = train_to_budget(cfg, train_dir, val_dir, out / r.name, budget_s, device, tta, say)
                trained[k] = (r.name, res)
            owner, res = trained[k]
            row = {
                "method": r.name,
                "tta": cfg.predict.tta if r.tta else 1,
                "params": _parameters(cfg),
                **res,
                "pred_dir": res["preds"][r.tta],
            }
            if owner != r.name:
                row.update({"shared_training_with": owner, "train_seconds": None})
            if r.crf:
                row["crf"] = crf.available()
                if row["crf"]:
                    crf.refine_folder(
                        row["pred_dir"], val_dir / "images", out / r.name / "preds-crf", cfg, cfg.predict.threshold
                    )
                    row["pred_dir"] = out / r.name / "preds-crf"
            return [row]

        for row in run_guarded(r.name, run_row, out / r.name, val_dir, n_boot, seed, say):
            results.append({**row, **meta})
        write_json(out / "ablate.json", json_safe(result_document("ablate", results, settings, started, False)))
    doc = json_safe(result_document("ablate", results, settings, started, True))
    write_json(out / "ablate.json", doc)
    write_text(out / "ablate.md", markdown(doc))
    return doc


COLUMNS = ["row", "Table II (paper)", *(c for c, _, _ in MD_FIGURES), "params M", "train min", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        note = " (CRF unavailable)" if r.get("crf") is False else ""
        train = (
            "shared"
            if r.get("shared_training_with")
            else (f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") is not None else "-")
        )
        out.append(
            [
                f"{r['label']}{note}",
                f"{r['paper_dice']:.3f}" if r.get("paper_dice") else "",
                *md_figures(r),
                f"{r['params'] / 1e6:.2f}" if r.get("params") else "-",
                train,
                status_text(r),
            ]
        )
    return out


def markdown(doc: dict) -> str:
    s = doc["settings"]
    return (
        f"# qmed ablate: Table II on this dataset\n\n{settings_sentence(doc, s['minutes_per_row'], 'row')} Preset {s['preset']}. "
        "The paper's column is its Dice on its own breast-cell data, for reference only. Dense CRF "
        f"{'available' if s['crf_available'] else 'unavailable (pip install pydensecrf2)'}.\n\n"
        + md_table(COLUMNS, table_rows(doc["results"]))
    )


def rich_table(doc: dict):
    """The terminal table (80 columns): row names, the paper's Dice and the main figures. Row labels, Dice
    fg and every CI are in ablate.md; a row that did not run shows "-" and its reason is in `notes`."""
    s = doc["settings"]
    rows = [
        ([r["method"], f"{r['paper_dice']:.3f}" if r.get("paper_dice") else ""], r.get("figures"))
        for r in doc["results"]
    ]
    return compact_table(
        f"Table II on {Path(s['val']).name}, {s['minutes_per_row']:g} min per row", ["row", "paper"], rows
    )


def notes(doc: dict) -> list[str]:
    """Lines to print under the table: failures with their reason, rows that ran without CRF."""
    out = [f"{r['method']}: {r['status']}: {r.get('reason', '')}" for r in doc["results"] if r["status"] != "ok"]
    out += [
        f"{r['method']}: ran without dense CRF (pip install pydensecrf2)"
        for r in doc["results"]
        if r.get("crf") is False
    ]
    return out
