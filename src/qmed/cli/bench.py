"""`qmed benchmark speed|quality|suite`: the recipe's cost, and qmed against plain smp and nnU-Net.

Registered on the main app by `qmed.cli.app`; the shared helpers come from `qmed.cli.common`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from qmed.cli.common import (
    COUNT,
    NNUNET_ID,
    POSITIVE,
    SEED,
    TILE,
    Rule,
    check_device,
    check_file_out,
    check_preset,
    check_ranges,
    check_writable_parent,
    console,
    err_console,
    handle_errors,
    setup_logging,
)

# The benchmarks' tables always print 95 % intervals: at least 100 resamples.
N_BOOT_CI = Rule("at least 100 (fewer resamples give no usable 95 % interval)", lo=100)

benchmark_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure speed and memory (speed); train qmed, plain smp and nnU-Net on one budget and score them (quality); qmed against plain smp on several datasets side by side (suite).",
)


@benchmark_app.command()
@handle_errors
def speed(
    preset: str = typer.Option("cpu", help="Preset to measure: cpu, paper, tiny."),
    size: int = typer.Option(256, help="Crop / image size in px (multiple of 32)."),
    batch: int | None = typer.Option(None, help="Training batch (default: the preset's)."),
    infer_batch: int | None = typer.Option(None, "--infer-batch", help="Inference batch (default: --batch)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    amp: bool = typer.Option(
        False,
        "--amp",
        help="Mixed precision: float16 autocast + GradScaler on CUDA; bfloat16 autocast on a CPU with native bfloat16 (AVX512-BF16 or AMX).",
    ),
    channels_last: bool = typer.Option(
        False, "--channels-last", help="Channels-last memory format for models and inputs."
    ),
    steps: int = typer.Option(
        10,
        help="Timed rounds: every task (train steps, parts, inference) is timed once per round, round-robin, after 2 warm-up calls; medians are reported.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset folder for the data pipeline (default: synthetic images)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a preset field, e.g. --set model.encoder=resnet34."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write every figure as JSON here."),
):
    """Images/s and peak memory of a train step and of inference (with and without TTA), and the recipe's overhead over a bare smp step."""
    from qmed.experiments.speed import rich_tables, run_speed
    from qmed.io.files import write_json

    setup_logging()
    check_ranges(
        ("--size", size, TILE),
        ("--batch", batch, COUNT),
        ("--infer-batch", infer_batch, COUNT),
        ("--steps", steps, COUNT),
    )
    check_preset(preset, auto=False)
    check_device(device)
    check_file_out(json_out, "--json", "speed.json")
    doc = run_speed(
        preset=preset,
        size=size,
        batch=batch,
        device=device,
        amp=amp,
        channels_last=channels_last,
        steps=steps,
        data=data,
        infer_batch=infer_batch,
        overrides=set_,
        say=lambda m: err_console.print(m, style="dim", markup=False),
    )
    for t in rich_tables(doc):
        console.print(t)
    console.print(f"memory: {doc['memory']['note']}")
    if json_out:
        write_json(json_out, doc)
        console.print(f"wrote {json_out}")


@benchmark_app.command()
@handle_errors
def quality(
    data: Path = typer.Option(..., "--data", help="Training dataset folder (images/ + masks/)."),
    val: Path = typer.Option(..., "--val", help="Validation dataset folder: every method is scored on it."),
    out: Path = typer.Option(..., "--out", help="Output folder: quality.json, quality.md and one folder per method."),
    minutes: float = typer.Option(30.0, help="Training budget per method, in minutes of wall-clock time."),
    methods: str = typer.Option("qmed,smp,nnunet", help="Comma-separated: qmed, smp, nnunet."),
    preset: str = typer.Option(
        "cpu",
        help="qmed preset, or auto (settings from the training data's fingerprint); the smp baseline uses the preset's encoder, crop and batch (cpu's with auto).",
    ),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    nnunet_trainer: str = typer.Option(
        "nnUNetTrainer_qmedBudget",
        "--nnunet-trainer",
        help="nnU-Net trainer: the budget-fitted stock trainer (default) or a stock variant such as nnUNetTrainer_1epoch.",
    ),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnU-Net dataset ID for the export (inside --out)."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % confidence intervals."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a setting of qmed's row only, e.g. --set model.input_mode=none (how a lever is measured).",
    ),
    qmed_val: bool = typer.Option(
        True,
        "--qmed-val/--qmed-no-val",
        help="--qmed-no-val: qmed trains without --val, as a user without a val folder (its own split of --data, or all of it with --set data.val_fraction=0); --val only scores.",
    ),
    train_seed: int = typer.Option(
        0, "--train-seed", help="train.seed of qmed and smp: rerun with other seeds to see each method's spread."
    ),
    smp_bf16: bool = typer.Option(
        False,
        "--smp-bf16",
        help="The smp baseline also trains in bfloat16 where the CPU has it natively (as qmed does): tells qmed's recipe from its precision.",
    ),
):
    """Train and score qmed, a plain smp baseline and nnU-Net v2 on the same data and budget; print one table."""
    from qmed.experiments.quality import failure_notes, parse_methods, rich_table, run_quality

    setup_logging()
    check_ranges(
        ("--minutes", minutes, POSITIVE),
        ("--dataset-id", dataset_id, NNUNET_ID),
        ("--n-boot", n_boot, N_BOOT_CI),
        ("--train-seed", train_seed, SEED),
    )
    check_preset(preset)
    check_device(device)
    check_writable_parent(out)
    doc = run_quality(
        data,
        val,
        out,
        minutes=minutes,
        methods=parse_methods(methods),
        preset=preset,
        device=device,
        nnunet_trainer=nnunet_trainer,
        dataset_id=dataset_id,
        n_boot=n_boot,
        force=force,
        overrides=set_ or None,
        say=lambda m: err_console.print(m, style="dim", markup=False),
        qmed_val=qmed_val,
        train_seed=train_seed,
        smp_bf16=smp_bf16,
    )
    console.print(rich_table(doc["results"], f"quality on {val}, {minutes:g} min training per method, 95 % CIs"))
    for note in failure_notes(doc["results"]):
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'quality.json'} and {out / 'quality.md'}")


@benchmark_app.command()
@handle_errors
def suite(
    data_root: Path = typer.Option(
        ..., "--data-root", help="Folder of datasets, each NAME/train (+ NAME/val), e.g. ../shared/data."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: suite.json, suite.md and NAME/METHOD/ per run."),
    datasets: str = typer.Option(
        ",".join(("dsb2018-fluo", "dsb2018-histo", "monuseg")),
        "--datasets",
        help="Comma-separated dataset names under --data-root; one without val/ gets a seeded 80/20 split.",
    ),
    minutes: float = typer.Option(30.0, help="Training budget per method and dataset, in minutes of wall-clock time."),
    preset: str = typer.Option(
        "auto", help="qmed's settings: auto (chosen from each dataset's fingerprint) or a preset name."
    ),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % confidence intervals."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a setting of qmed's runs only, e.g. --set train.accumulate=1 (a candidate default against smp).",
    ),
    train_seed: int = typer.Option(
        0, "--train-seed", help="train.seed of both methods: rerun with other seeds to see each method's spread."
    ),
    smp_bf16: bool = typer.Option(
        False,
        "--smp-bf16",
        help="The smp script also trains in bfloat16 where the CPU has it natively (as qmed does): tells qmed's recipe from its precision.",
    ),
):
    """qmed's default and the plain smp script, side by side (one core each) at one budget on each dataset; Dice, object F1, HD95 and the paired difference."""
    from qmed.experiments.suite import rich_table, run_suite

    setup_logging()
    check_ranges(("--minutes", minutes, POSITIVE), ("--n-boot", n_boot, N_BOOT_CI), ("--train-seed", train_seed, SEED))
    check_preset(preset)
    check_device(device)
    check_writable_parent(out)
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    doc = run_suite(
        data_root,
        out,
        names,
        minutes=minutes,
        preset=preset,
        device=device,
        n_boot=n_boot,
        force=force,
        say=lambda m: err_console.print(m, style="dim", markup=False),
        overrides=set_ or None,
        train_seed=train_seed,
        smp_bf16=smp_bf16,
    )
    console.print(rich_table(doc))
    if doc.get("mean_paired_dice_empty1") is not None:
        console.print(f"mean paired difference qmed - smp over the datasets: {doc['mean_paired_dice_empty1']:+.4f}")
    console.print(f"wrote {out / 'suite.json'} and {out / 'suite.md'}")
