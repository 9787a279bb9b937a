"""`qmed benchmark suite`: qmed's default against the plain smp script on several datasets at once.

For each dataset of the list, qmed (its default for data of that kind: `--preset auto`, the
fingerprint's choice, unless another preset is named) and the plain smp baseline of `qmed
benchmark quality` train on TRAIN for the same wall-clock budget and predict VAL. The two run
side by side, each in its own process with one torch thread, pinned to its own core when the
machine has two or more, so both see the same machine at the same time. Both are scored by
`qmed evaluate` (through `qmed.experiments.common.score`) on the same VAL masks.

Per dataset the suite reports the three Dice figures (per image with empty = 1, foreground images
only, pooled over pixels), object F1, HD95, the DSB mean AP of the objects (qmed's: the
watershed instances of `qmed predict --instances`; smp's: the connected components of its mask,
what the plain script gets), and the paired per-image difference qmed - smp of
Dice (empty = 1) with its 95 % bootstrap CI: the images are the unit, so a difference that the
images agree on shows a CI clear of 0 even when both methods' own CIs overlap.

Datasets are folders under DATA_ROOT named as in `../shared/data`: NAME/train and NAME/val. A
dataset without a val folder (MoNuSeg ships 30 training images only) is split once, seeded and
recorded: the images sorted by name, shuffled with numpy's default_rng(SPLIT_SEED), the last
VAL_SHARE of them to val (MoNuSeg: 24 to train, 6 to val); the split's file lists are written to
OUT/splits/NAME.json and the val images are copied to OUT/data/NAME/val so they can be predicted.

Results: OUT/suite.json (every figure, settings, machine) and OUT/suite.md (the table), written
atomically after each dataset; OUT/NAME/METHOD/ holds each run (`qmed benchmark quality` layout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qmed.errors import QmedInputError
from qmed.evaluate.stats import bootstrap_means, percentile_interval
from qmed.experiments.common import machine_info
from qmed.io.files import json_safe, prepare_output_dir, write_json, write_text
from qmed.report.tables import fmt_figure, md_table

DATASETS = ("dsb2018-fluo", "dsb2018-histo", "monuseg")
SPLIT_SEED = 0
VAL_SHARE = 0.2


def dataset_splits(root: Path, name: str, out: Path) -> tuple[Path, Path, dict]:
    """(train source, val folder, split record) of dataset `name` under `root`."""
    from qmed.data.dataset import find_pairs, write_pairs_csv

    ds = root / name
    train = ds / "train"
    if not train.is_dir():
        raise QmedInputError(ds, "has no train/ folder (expected NAME/train and optionally NAME/val)")
    if (ds / "val").is_dir():
        return train, ds / "val", {"train": str(train), "val": str(ds / "val"), "split": "given"}
    pairs = find_pairs(train)
    if len(pairs) < 5:
        raise QmedInputError(train, f"has {len(pairs)} images and no val/ folder: too few to split off a val set")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
    n_val = max(1, round(VAL_SHARE * len(pairs)))
    val_pairs = [pairs[i] for i in sorted(order[-n_val:])]
    train_pairs = [pairs[i] for i in sorted(order[:-n_val])]
    val_dir = out / "data" / name / "val"
    for sub in ("images", "masks"):
        (val_dir / sub).mkdir(parents=True, exist_ok=True)
    for p in val_pairs:
        shutil.copy2(p.image, val_dir / "images" / p.image.name)
        shutil.copy2(p.mask, val_dir / "masks" / p.mask.name)
    train_csv = write_pairs_csv(out / "data" / name / "train.csv", train_pairs)
    record = {
        "split": f"seeded: numpy default_rng({SPLIT_SEED}) permutation of the sorted names, last {n_val} to val",
        "train": [p.name for p in train_pairs],
        "val": [p.name for p in val_pairs],
    }
    write_json(out / "splits" / f"{name}.json", record)
    return train_csv, val_dir, {"train": str(train_csv), "val": str(val_dir), **record}


def _method_command(
    method: str,
    train,
    val: Path,
    out: Path,
    minutes: float,
    preset: str,
    device: str | None,
    n_boot: int,
    overrides: list[str] | None = None,
    train_seed: int = 0,
    smp_bf16: bool = False,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "qmed.cli",
        "benchmark",
        "quality",
        "--data",
        str(train),
        "--val",
        str(val),
        "--out",
        str(out),
        "--minutes",
        f"{minutes:g}",
        "--methods",
        method,
        "--preset",
        preset,
        "--n-boot",
        str(n_boot),
        "--force",
        "--train-seed",
        str(train_seed),
    ]
    if method == "qmed":  # a lever changes qmed's row only; smp stays the plain script
        cmd += [a for kv in overrides or [] for a in ("--set", kv)]
    if method == "smp" and smp_bf16:
        cmd.append("--smp-bf16")
    return cmd + (["--device", device] if device else [])


def run_side_by_side(commands: dict[str, list[str]], logs: Path, say: Callable) -> dict[str, int]:
    """Run the commands at once, one torch thread each, each pinned to its own core where there are
    enough; -> exit code per name. The output of each goes to LOGS/NAME.log."""
    logs.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = {}
    for k, (name, cmd) in enumerate(commands.items()):
        core = cores[k] if len(cores) >= len(commands) else None

        def pin(core=core):
            if core is not None:
                os.sched_setaffinity(0, {core})

        fh = open(logs / f"{name}.log", "w", encoding="utf-8")
        say(
            f"  {name}: started"
            + (f" on core {core}" if core is not None else " (not pinned: fewer cores than methods)")
        )
        procs[name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=pin), fh)
    codes = {}
    for name, (proc, fh) in procs.items():
        codes[name] = proc.wait()
        fh.close()
    return codes


def paired_difference(
    a_rows: list[dict], b_rows: list[dict], key: str = "dice_empty1", n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean per-image difference a - b over the images both scored, with its percentile bootstrap CI."""
    a = {r["name"]: r.get(key) for r in a_rows}
    b = {r["name"]: r.get(key) for r in b_rows}
    names = sorted(n for n in a.keys() & b.keys() if a[n] is not None and b[n] is not None)
    diff = np.array([a[n] - b[n] for n in names], dtype=float)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return {"mean": float("nan"), "ci": [float("nan"), float("nan")], "n": 0, "better": 0, "worse": 0}
    lo, hi = percentile_interval(bootstrap_means(diff, n_boot, seed))
    return {
        "mean": float(diff.mean()),
        "ci": [lo, hi],
        "n": int(diff.size),
        "better": int((diff > 0).sum()),
        "worse": int((diff < 0).sum()),
    }


def run_suite(
    data_root: str | Path,
    out: str | Path,
    datasets: list[str] | tuple[str, ...] = DATASETS,
    minutes: float = 30.0,
    preset: str = "auto",
    device: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    force: bool = False,
    say: Callable = print,
    overrides: list[str] | None = None,
    train_seed: int = 0,
    smp_bf16: bool = False,
) -> dict:
    """Every dataset: qmed and smp side by side at one budget, scored and compared; -> the JSON document.
    `train_seed`: both methods' train.seed (`seed` is the bootstrap's). `smp_bf16`: smp also trains
    in bfloat16 where the CPU has it (the control for qmed's precision)."""
    data_root, out = Path(data_root), Path(out)
    if minutes <= 0:
        raise QmedInputError(None, f"--minutes must be positive, got {minutes}")
    if not datasets:
        raise QmedInputError(None, "--datasets: give at least one dataset name")
    for name in datasets:
        if not (data_root / name / "train").is_dir():
            raise QmedInputError(data_root / name, "dataset not found (expected NAME/train under --data-root)")
    prepare_output_dir(out, force, inputs=[data_root], verb="benchmark suite")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows: list[dict] = []
    for name in datasets:
        say(f"[{name}] {minutes:g} min per method")
        train, val, split = dataset_splits(data_root, name, out)
        commands = {
            m: _method_command(
                m, train, val, out / name / m, minutes, preset, device, n_boot, overrides, train_seed, smp_bf16
            )
            for m in ("qmed", "smp")
        }
        t0 = time.time()
        codes = run_side_by_side(commands, out / name / "logs", say)
        rows.append(_dataset_row(name, split, out / name, codes, n_boot, seed, time.time() - t0))
        write_json(
            out / "suite.json",
            json_safe(
                _document(
                    rows,
                    data_root,
                    datasets,
                    minutes,
                    preset,
                    device,
                    n_boot,
                    seed,
                    started,
                    overrides=overrides,
                    train_seed=train_seed,
                    smp_bf16=smp_bf16,
                )
            ),
        )
    doc = json_safe(
        _document(
            rows,
            data_root,
            datasets,
            minutes,
            preset,
            device,
            n_boot,
            seed,
            started,
            finished=True,
            train_seed=train_seed,
            overrides=overrides,
            smp_bf16=smp_bf16,
        )
    )
    write_json(out / "suite.json", doc)
    write_text(out / "suite.md", markdown(doc))
    return doc


def method_per_image(suite: str | Path, dataset: str, method: str, folder: str | None = None) -> list[dict]:
    """One method's per-image rows (name, dice_empty1, ...) in a suite run's DATASET/METHOD/quality.json
    (DATASET/FOLDER/quality.json: a lever screen keeps qmed's rows in base/ and lever/); [] if absent."""
    qfile = Path(suite) / dataset / (folder or method) / "quality.json"
    if not qfile.is_file():
        return []
    return (json.loads(qfile.read_text()).get("per_image") or {}).get(method) or []


def pooled_per_image(
    suites: list[str | Path],
    dataset: str,
    method: str,
    excluded: frozenset[str] | set[str] = frozenset(),
    folder: str | None = None,
) -> tuple[list[dict], list[float]]:
    """One method's per-image Dice (empty = 1) averaged over several suite runs, on the images every run
    scored, and each run's mean on those images. One run cannot resolve a lead of the bar's size (the
    plain script moved 0.010 on histology run to run, docs 12g), so runs are pooled before pairing."""
    per_run = [
        {
            r["name"]: r["dice_empty1"]
            for r in method_per_image(s, dataset, method, folder)
            if r["name"] not in excluded and r.get("dice_empty1") is not None
        }
        for s in suites
    ]
    per_run = [d for d in per_run if d]
    if not per_run:
        return [], []
    names = sorted(set.intersection(*(set(d) for d in per_run)))
    rows = [{"name": n, "dice_empty1": float(np.mean([d[n] for d in per_run]))} for n in names]
    return rows, [float(np.mean([d[n] for n in names])) for d in per_run]


def _dataset_row(
    name: str, split: dict, root: Path, codes: dict[str, int], n_boot: int, seed: int, seconds: float
) -> dict:
    row: dict = {
        "dataset": name,
        "split": {k: v for k, v in split.items() if k in ("split", "train", "val")},
        "wall_seconds": round(seconds, 1),
        "methods": {},
    }
    per_image = {}
    for method in ("qmed", "smp"):
        qfile = root / method / "quality.json"
        if codes.get(method) != 0 or not qfile.is_file():
            row["methods"][method] = {
                "status": "failed",
                "reason": f"exit code {codes.get(method)}; see {root / 'logs' / (method + '.log')}",
            }
            continue
        q = json.loads(qfile.read_text())
        r = next(x for x in q["results"] if x["method"] == method)
        row["methods"][method] = {k: r.get(k) for k in ("status", "reason", "figures", "work", "train_seconds", "tta")}
        per_image[method] = method_per_image(root.parent, name, method)
    if len(per_image) == 2:
        row["paired_dice_empty1"] = paired_difference(per_image["qmed"], per_image["smp"], n_boot=n_boot, seed=seed)
    return row


def _document(
    rows,
    data_root,
    datasets,
    minutes,
    preset,
    device,
    n_boot,
    seed,
    started,
    finished: bool = False,
    overrides: list[str] | None = None,
    train_seed: int = 0,
    smp_bf16: bool = False,
) -> dict:
    diffs = [r["paired_dice_empty1"]["mean"] for r in rows if r.get("paired_dice_empty1")]
    return {
        "benchmark": "suite",
        "finished": finished,
        "started": started,
        "settings": {
            "data_root": str(Path(data_root).resolve()),
            "datasets": list(datasets),
            "minutes_per_method": minutes,
            "preset": preset,
            "qmed_overrides": list(overrides or []),
            "device": device or "default",
            "n_boot": n_boot,
            "seed": seed,
            "train_seed": train_seed,
            "smp_bf16": smp_bf16,
            "side_by_side": "one process per method, 1 torch thread each, pinned to its own core",
        },
        "machine": machine_info(),
        "datasets": rows,
        "mean_paired_dice_empty1": float(np.mean(diffs)) if diffs else None,
    }


COLUMNS = [
    "dataset",
    "method",
    "work done",
    "Dice empty=1 [95% CI]",
    "Dice fg",
    "Dice pooled [95% CI]",
    "object F1",
    "HD95 px",
    "mean AP [95% CI]",
    "qmed - smp, paired [95% CI]",
]


def table_rows(doc: dict) -> list[list[str]]:
    out = []
    for r in doc["datasets"]:
        d = r.get("paired_dice_empty1")
        paired = f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] (n={d['n']})" if d and d["n"] else "-"
        for method in ("qmed", "smp"):
            m = r["methods"].get(method) or {}
            f = m.get("figures") or {}
            if m.get("status") != "ok":
                out.append([r["dataset"], method, m.get("reason") or "-", "-", "-", "-", "-", "-", "-", ""])
                continue
            out.append(
                [
                    r["dataset"],
                    method,
                    work_done(m),
                    fmt_figure(f.get("dice_empty1")),
                    fmt_figure(f.get("dice_fg")),
                    fmt_figure(f.get("dice_pooled")),
                    fmt_figure(f.get("object_f1")),
                    fmt_figure(f.get("hd95"), 1),
                    fmt_figure(f.get("map_dsb")),
                    paired if method == "qmed" else "",
                ]
            )
    return out


def work_done(m: dict) -> str:
    """The row's work and the minutes its training loop really took: each method's schedule is fitted
    to the budget by its own calibration, so the two can end a few minutes apart."""
    work = m.get("work") or "-"
    return f"{work}, {m['train_seconds'] / 60:.1f} min" if m.get("train_seconds") else work


def markdown(doc: dict) -> str:
    s = doc["settings"]
    mean = doc.get("mean_paired_dice_empty1")
    head = (
        f"# qmed benchmark suite\n\nstarted {doc['started']}; {s['minutes_per_method']:g} min training per method, qmed "
        f"preset {s['preset']}{overrides_note(s)}, {s['side_by_side']}; {doc['machine']['cpu_count']} CPUs "
        f"({doc['machine'].get('cpu_model', doc['machine']['processor'])}{bf16_note(doc['machine'], s.get('smp_bf16', False))}); 95 % bootstrap CIs ({s['n_boot']} resamples, seed {s['seed']}).\n\n"
    )
    tail = (
        f"\nMean paired difference (qmed - smp, Dice per image, empty = 1) over the datasets: {mean:+.4f}\n"
        if mean is not None
        else ""
    )
    return head + md_table(COLUMNS, table_rows(doc)) + tail


def bf16_note(machine: dict, smp_bf16: bool = False) -> str:
    native = machine.get("cpu_native_bf16")
    if native is None:  # a document from before the field was recorded
        return ""
    if not native:
        return ", no native bfloat16: both train in float32"
    # qmed follows its config's train.cpu_bf16 (on in cpu/auto); smp is float32 unless --smp-bf16
    return (
        ", native bfloat16: qmed per train.cpu_bf16, smp too (--smp-bf16)"
        if smp_bf16
        else ", native bfloat16: qmed per train.cpu_bf16, smp in float32"
    )


def overrides_note(settings: dict) -> str:
    sets = settings.get("qmed_overrides") or []
    return f" with {' '.join('--set ' + kv for kv in sets)}" if sets else ""


def rich_table(doc: dict):
    from rich.table import Table

    t = Table(title=f"qmed vs plain smp, {doc['settings']['minutes_per_method']:g} min each", show_lines=True)
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for row in table_rows(doc):
        t.add_row(*row)
    return t
