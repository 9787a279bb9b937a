"""`qmed ablate` and `qmed curve`: Table II with the component ablations, and the data-efficiency curve.

Registered on the main app by `qmed.cli.app`; the shared helpers come from `qmed.cli.common`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from qmed.cli.common import (
    COUNT,
    FRACTION,
    POSITIVE,
    SEED,
    Rule,
    check_device,
    check_preset,
    check_ranges,
    check_writable_parent,
    console,
    err_console,
    handle_errors,
    setup_logging,
)

# The tables always print 95 % intervals: at least 100 resamples.
N_BOOT_CI = Rule("at least 100 (fewer resamples give no usable 95 % interval)", lo=100)
MC_PASSES = Rule("at least 2 (the uncertainty is the spread between passes)", lo=2)


@handle_errors
def ablate(
    data: Path = typer.Option(..., "--data", help="Training dataset folder (images/ + masks/) or CSV list of pairs."),
    val: Path = typer.Option(
        ..., "--val", help="Validation dataset folder: every row is scored on it with qmed evaluate."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: ablate.json, ablate.md and one folder per row."),
    budget: float = typer.Option(10.0, "--budget", help="Training budget per row, in minutes of wall-clock time."),
    preset: str = typer.Option(
        "cpu", help="The Enhanced recipe's preset; the ladder's rungs use its encoder, weights and crop."
    ),
    only: str = typer.Option(
        "ladder,ablations",
        "--only",
        help="Comma-separated rows or groups: all, ladder, ablations, hq; rows unet_dice, attention_unet, "
        "attention_unet_hybrid, mc_dropout_al, ms_attention_unet, enhanced, no_edge, stem4, "
        "uniform_sampler, other_loss, no_tta, hq_unet, hq_unet_classical.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a preset field under every row, e.g. --set data.crop=128 (rows' own switches win)."
    ),
    al_start: float = typer.Option(0.4, "--al-start", help="MC-Dropout rung: fraction of TRAIN labelled at the start."),
    al_step: float = typer.Option(
        0.2, "--al-step", help="MC-Dropout rung: fraction of TRAIN added (most uncertain first) per round."
    ),
    al_rounds: int = typer.Option(
        3, "--al-rounds", help="MC-Dropout rung: trainings in all; the budget is split over them."
    ),
    mc_passes: int = typer.Option(8, "--mc-passes", help="MC-Dropout rung: stochastic forward passes per pool image."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % confidence intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the active-learning start set."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
):
    """Re-run the paper's Table II ladder and the Enhanced recipe's component ablations on your data, one budget per row; print the table.

    Ladder: U-Net + Dice, Attention U-Net, + hybrid loss, MC-Dropout active learning, multi-scale Att-UNet, Enhanced (the preset), each beside the paper's Dice. Ablations of Enhanced: edge channel off, smp 4-channel stem, uniform sampling, the other loss, no TTA. hq: HQ-UNet and its equal-size classical twin.

    Rows are scored like qmed evaluate: Dice with bootstrap CIs, pooled Dice, IoU, HD95, boundary F1, small-object recall."""
    from qmed.experiments.ablate import ActiveSettings, notes, rich_table, run_ablate

    setup_logging()
    check_ranges(
        ("--budget", budget, POSITIVE),
        ("--al-start", al_start, FRACTION),
        ("--al-step", al_step, FRACTION),
        ("--al-rounds", al_rounds, COUNT),
        ("--mc-passes", mc_passes, MC_PASSES),
        ("--n-boot", n_boot, N_BOOT_CI),
        ("--seed", seed, SEED),
    )
    check_preset(preset, auto=False)
    check_device(device)
    check_writable_parent(out)
    doc = run_ablate(
        data,
        val,
        out,
        minutes=budget,
        only=only,
        preset=preset,
        overrides=set_,
        device=device,
        n_boot=n_boot,
        seed=seed,
        active=ActiveSettings(al_start, al_step, al_rounds, mc_passes),
        force=force,
        say=lambda m: err_console.print(m, style="dim", markup=False),
    )
    console.print(rich_table(doc))
    for note in notes(doc):
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'ablate.json'} and {out / 'ablate.md'} (row labels, Dice fg and every CI)")


@handle_errors
def curve(
    data: Path = typer.Option(..., "--data", help="Training dataset folder (images/ + masks/) or CSV list of pairs."),
    val: Path = typer.Option(..., "--val", help="Validation dataset folder: every run is scored on all of it."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: curve.json, curve.md, curve.png and one folder per run."
    ),
    fractions: str = typer.Option(
        "0.1,0.25,0.5,1.0", "--fractions", help="Comma-separated fractions of TRAIN in (0, 1]; nested seeded subsets."
    ),
    budget: float = typer.Option(
        10.0, "--budget", help="Training budget per run (each method and subset), in minutes."
    ),
    preset: str = typer.Option("cpu", help="qmed's preset (the smp baseline uses its encoder, crop and batch)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a preset field for both methods, e.g. --set data.crop=128."
    ),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % confidence intervals."),
    seed: int = typer.Option(0, help="Seed of the subsets and the bootstrap."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
):
    """Data efficiency: train qmed (the preset, with TTA) and the plain smp baseline on growing subsets of TRAIN; Dice on VAL against the number of training images (table and plot)."""
    from qmed.experiments.curve import parse_fractions, rich_table, run_curve

    setup_logging()
    check_ranges(("--budget", budget, POSITIVE), ("--n-boot", n_boot, N_BOOT_CI), ("--seed", seed, SEED))
    check_preset(preset, auto=False)
    check_device(device)
    check_writable_parent(out)
    doc = run_curve(
        data,
        val,
        out,
        fractions=parse_fractions(fractions),
        minutes=budget,
        preset=preset,
        overrides=set_,
        device=device,
        n_boot=n_boot,
        seed=seed,
        force=force,
        say=lambda m: err_console.print(m, style="dim", markup=False),
    )
    console.print(rich_table(doc))
    for r in doc["results"]:
        if r["status"] != "ok":
            console.print(
                f"{r['method']}: {r['status']}: {r.get('reason', '')}", markup=False, highlight=False, soft_wrap=True
            )
    console.print(f"wrote {out / 'curve.json'}, {out / 'curve.md'} and {out / 'curve.png'}")
