"""`qmed classify ...`: inspect, train, evaluate, predict, compare (image classification, SPEC Q1-Q3).

Registered on the main app by `qmed.cli.app`; the shared helpers come from `qmed.cli.common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from click.core import ParameterSource

from qmed.cli.common import (
    COUNT,
    N_BOOT,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Rule,
    check_device,
    check_file_out,
    check_ranges,
    check_writable_parent,
    console,
    handle_errors,
    setup_logging,
    weights_option,
)
from qmed.config import ClassifyConfig, available_classify_presets, deep_merge, parse_overrides, resolve_classify_config
from qmed.errors import QmedInputError

classify_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Image classification (class folders or MedMNIST .npz) with an optional quantum feature layer.",
)

DATA_HELP = "Class-folder dataset (ROOT/CLASS/*.png) or a MedMNIST .npz (FILE.npz or FILE.npz:SPLIT)."


_d = ClassifyConfig.default  # the options repeat ClassifyConfig's fields with its defaults

# The ranges ClassifyConfig also enforces (for --set and presets), checked here per option first.
THRESHOLD = Rule(
    "above 0 and below 1 (positive when its probability >= threshold)", lo=0, hi=1, lo_open=True, hi_open=True
)
IMAGE_SIZE = Rule("at least 16 (pixels)", lo=16)
BATCH = Rule("at least 2 (batch norm needs two images)", lo=2)
QUBITS = Rule("between 1 and 20 (statevector simulation costs 2**Q)", lo=1, hi=20)
LAYERS = Rule("between 1 and 50", lo=1, hi=50)


def _check_training_options(v: dict[str, Any]) -> None:
    """The numeric options train and compare share, by their flag names."""
    rules = {
        "qubits": QUBITS,
        "layers": LAYERS,
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "epochs": COUNT,
        "minutes": POSITIVE,
        "lr": POSITIVE,
        "pqc_lr_mult": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "patience": COUNT,
        "seed": SEED,
    }
    check_ranges(*((f"--{k.replace('_', '-')}", v[k], r) for k, r in rules.items() if k in v))


def _given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (not left at their defaults): they override the preset."""
    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}


@classify_app.command("inspect")
@handle_errors
def inspect_cmd(
    data: Path = typer.Argument(..., help=DATA_HELP),
    positive: str | None = typer.Option(None, help="Report this class's share (positive vs rest)."),
):
    """Print the class counts and the imbalance of a classification dataset."""
    setup_logging(False)
    from qmed.classify.data import describe_dataset

    d = describe_dataset(data, positive)
    con = console
    for split, s in d["splits"].items():
        parts = ", ".join(f"{c} {k} ({100 * k / max(1, s['n']):.1f} %)" for c, k in s["counts"].items())
        line = f"{split}: {s['n']} images; {parts}; majority:minority {s['majority_minority_ratio']:.2f}:1"
        if "positive" in s:
            line += f"; positive {positive}: {100 * s['positive']['fraction']:.1f} %"
        con.print(line, markup=False, highlight=False, soft_wrap=True)


@classify_app.command("train")
@handle_errors
def train_cmd(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Training set. " + DATA_HELP),
    val: str | None = typer.Option(
        None, "--val", help="Validation set (same forms). Without it: a stratified seeded 20 % split of --data."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run directory: config.json, metrics.csv, train.log, checkpoints/, summary.json, eval/."
    ),
    preset: str = typer.Option(
        "cpu",
        "--preset",
        help=f"Named settings (src/qmed/configs/classify-NAME.yaml): {', '.join(available_classify_presets())}. "
        "The options below override it, and --set overrides them.",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a setting by its config name, e.g. --set rotate_deg=15 --set dropout=0.3 (YAML values; repeatable).",
    ),
    positive: str | None = typer.Option(
        _d("positive"), help="Binary task: this class vs the rest (e.g. malignant). Default: all classes."
    ),
    model: str = typer.Option(
        _d("model"), help="mobilenet_v2, resnet18, densenet121, vgg16, efficientnet_b0, or timm:NAME."
    ),
    weights: str = typer.Option(
        _d("weights"),
        help="imagenet (mobilenet_v2: the offline file when installed), a local .pth (e.g. qmed pretrain simclr's encoder.pth), offline-mobilenet, or none.",
    ),
    pqc: bool = typer.Option(_d("pqc"), "--pqc/--no-pqc", help="Quantum feature layer on the pooled features."),
    qubits: int = typer.Option(_d("qubits"), help="Qubits Q of the quantum layer."),
    layers: int = typer.Option(_d("layers"), help="Variational entangling layers L."),
    entangler: str = typer.Option(
        _d("entangler"), help="strong (StronglyEntanglingLayers) or basic (BasicEntanglerLayers)."
    ),
    rotation: str = typer.Option(_d("rotation"), help="Angle encoding rotation: Y or X."),
    qdevice: str = typer.Option(_d("qdevice"), help="PennyLane device name."),
    diff_method: str = typer.Option(
        _d("diff_method"), help="PennyLane diff_method (backprop broadcasts on default.qubit)."
    ),
    image_size: int = typer.Option(_d("image_size"), help="Images are resized to SIZE x SIZE."),
    batch_size: int = typer.Option(_d("batch_size")),
    epochs: int = typer.Option(_d("epochs"), help="Epoch limit."),
    minutes: float | None = typer.Option(_d("minutes"), help="Wall-clock training budget in minutes."),
    lr: float = typer.Option(_d("lr"), help="Adam learning rate (the quantum branch uses lr x --pqc-lr-mult)."),
    pqc_lr_mult: float = typer.Option(_d("pqc_lr_mult"), help="Learning-rate multiplier of the quantum branch."),
    weight_decay: float = typer.Option(_d("weight_decay"), help="L2 weight decay (Adam)."),
    patience: int = typer.Option(_d("patience"), help="Early stopping: epochs without a better validation AUC."),
    class_weights: bool = typer.Option(
        _d("class_weights"),
        "--class-weights/--no-class-weights",
        help="Inverse-frequency class-weighted cross-entropy.",
    ),
    augment: bool = typer.Option(
        _d("augment"), "--augment/--no-augment", help="Flips, small rotations/scales/shifts, brightness/contrast."
    ),
    synthetic: str | None = typer.Option(
        _d("synthetic"),
        "--synthetic",
        help="Folder of extra images (or a `qmed synthesize` output folder) added to the training set only, never to validation.",
    ),
    synthetic_class: str | None = typer.Option(
        _d("synthetic_class"),
        "--synthetic-class",
        help="Class of the --synthetic images (default: --positive, or the second class of a two-class set).",
    ),
    seed: int = typer.Option(_d("seed")),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
):
    """Train a classifier (MobileNetV2 + quantum feature layer by default); keeps the best validation AUC.

    Settings: the --preset, then the options given here, then each --set (any ClassifyConfig field, e.g. vflip, dropout, threshold)."""
    setup_logging(True)
    from qmed.classify.train import train_classifier

    check_device(device)
    check_writable_parent(out)
    options = dict(
        model=model,
        weights=weights_option(weights),
        pqc=pqc,
        qubits=qubits,
        layers=layers,
        entangler=entangler,
        rotation=rotation,
        qdevice=qdevice,
        diff_method=diff_method,
        positive=positive,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        minutes=minutes,
        lr=lr,
        pqc_lr_mult=pqc_lr_mult,
        weight_decay=weight_decay,
        patience=patience,
        class_weights=class_weights,
        augment=augment,
        seed=seed,
        synthetic=synthetic,
        synthetic_class=synthetic_class,
    )
    _check_training_options(options)
    cfg = resolve_classify_config(
        preset, deep_merge(_given(ctx, options), parse_overrides(set_)), "--set" if set_ else None
    )
    s = train_classifier(cfg, data, val, out, force=force, device=device)
    con = console
    con.print(
        _metrics_line(s["val_metrics"], f"val ({s['val']['n']} images, best epoch {s['best_epoch']})"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if s["profile"].get("pqc_share") is not None:
        p = s["profile"]
        con.print(
            f"quantum layer: {p['pqc_ms']:.1f} ms of a {p['step_ms']:.0f} ms training step ({100 * p['pqc_share']:.1f} %), alpha {s['alpha']:+.4f}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    con.print(
        f"run written to {out} (checkpoints/best.pt, metrics.csv, summary.json, eval/metrics.json, eval/figures/)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _interval(v: dict) -> str:
    """' [lo, hi]', or '' when no interval was computed (n_boot 0, or too few images)."""
    lo, hi = v.get("ci_low"), v.get("ci_high")
    if lo is None or hi is None or lo != lo or hi != hi:
        return ""
    return f" [{lo:.4f}, {hi:.4f}]"


def _metrics_line(m: dict, title: str) -> str:
    parts = [f"{k} {m[k]['value']:.4f}{_interval(m[k])}" for k in m]
    return f"{title}: " + "; ".join(parts)


@classify_app.command("evaluate")
@handle_errors
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="Run directory of qmed classify train, or a .pt checkpoint."),
    data: str = typer.Option(
        ..., "--data", help="Labelled set. " + DATA_HELP + " (.npz default split: test, else val)"
    ),
    out: Path | None = typer.Option(None, "--out", help="Write metrics.json, predictions.csv and figures/ here."),
    threshold: float | None = typer.Option(
        None, help="Decision threshold on the positive class (default: the run's, 0.5)."
    ),
    n_boot: int | None = typer.Option(
        None, help="Bootstrap resamples, at least 100; 0: no intervals (default: the run's, 1000)."
    ),
    seed: int | None = typer.Option(None, help="Bootstrap seed (default: the run's)."),
    device: str | None = typer.Option(None),
):
    """Score a trained classifier: accuracy, balanced accuracy, AUC, F1, sensitivity, specificity with 95 % bootstrap CIs."""
    setup_logging(False)
    from qmed.classify.evaluate import evaluate_run

    check_ranges(("--threshold", threshold, THRESHOLD), ("--n-boot", n_boot, N_BOOT), ("--seed", seed, SEED))
    check_device(device)
    check_writable_parent(out)
    r = evaluate_run(model, data, out, n_boot=n_boot, seed=seed, threshold=threshold, device=device)
    con = console
    counts = ", ".join(f"{c} {k}" for c, k in r["counts"].items())
    con.print(f"{r['source']}: {r['n']} images ({counts})", markup=False, highlight=False, soft_wrap=True)
    for k, v in r["metrics"].items():
        con.print(f"  {k:18s} {v['value']:.4f} {_interval(v)}", markup=False, highlight=False, soft_wrap=True)
    if out:
        con.print(
            f"wrote {out / 'metrics.json'}, {out / 'predictions.csv'} and {out / 'figures'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@classify_app.command("predict")
@handle_errors
def predict_cmd(
    model: Path = typer.Option(..., "--model", help="Run directory of qmed classify train, or a .pt checkpoint."),
    input: str = typer.Option(
        ..., "--input", help="Folder of images (searched recursively), one image, or FILE.npz:SPLIT."
    ),
    out: Path = typer.Option(..., "--out", help="CSV: file, predicted class, one probability column per class."),
    threshold: float | None = typer.Option(None, help="Decision threshold on the positive class (default: the run's)."),
    device: str | None = typer.Option(None),
):
    """Predict the class of new images."""
    setup_logging(False)
    from qmed.classify.predict import predict_files

    check_ranges(("--threshold", threshold, THRESHOLD))
    check_device(device)
    check_file_out(out, "--out", "predictions.csv")
    n = predict_files(model, input, out, threshold=threshold, device=device)
    console.print(f"wrote {n} predictions to {out}", markup=False, highlight=False, soft_wrap=True)


@classify_app.command("compare")
@handle_errors
def compare_cmd(
    data: str = typer.Option(..., "--data", help="Training set. " + DATA_HELP),
    val: str | None = typer.Option(None, "--val", help="Validation set (same split for every method)."),
    out: Path = typer.Option(..., "--out", help="One run directory per method, plus compare.md and compare.json."),
    minutes: float = typer.Option(5.0, help="Training budget per method, in minutes."),
    methods: str = typer.Option(
        "resnet18,mobilenet_v2,densenet121,vgg16,efficientnet_b0,mobilenet_v2+pqc",
        help="Comma-separated; NAME+pqc adds the quantum layer.",
    ),
    weights: str = typer.Option(_d("weights"), help="imagenet, none, or a file (applies to every method)."),
    weights_file: list[str] = typer.Option(
        [], "--weights-file", help="Per-model local weights, e.g. resnet18=/path/resnet18.pth (repeatable)."
    ),
    positive: str | None = typer.Option(_d("positive"), help="Binary task: this class vs the rest."),
    image_size: int = typer.Option(_d("image_size")),
    batch_size: int = typer.Option(_d("batch_size")),
    epochs: int = typer.Option(_d("epochs")),
    lr: float = typer.Option(_d("lr")),
    weight_decay: float = typer.Option(_d("weight_decay")),
    patience: int = typer.Option(_d("patience")),
    qubits: int = typer.Option(_d("qubits")),
    layers: int = typer.Option(_d("layers")),
    class_weights: bool = typer.Option(_d("class_weights"), "--class-weights/--no-class-weights"),
    seed: int = typer.Option(_d("seed")),
    force: bool = typer.Option(False, "--force"),
    device: str | None = typer.Option(None),
):
    """Train the baselines and the quantum model on the same split and budget; print one table.

    A method whose ImageNet weights cannot be fetched (offline) is listed as skipped; give it a local
    file with --weights-file NAME=PATH."""
    setup_logging(True)
    from qmed.classify.compare import compare, compare_table

    _check_training_options(
        dict(
            minutes=minutes,
            image_size=image_size,
            batch_size=batch_size,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            patience=patience,
            qubits=qubits,
            layers=layers,
            seed=seed,
        )
    )
    check_device(device)
    check_writable_parent(out)
    files = {}
    for item in weights_file:
        if "=" not in item:
            raise QmedInputError(None, f"--weights-file {item!r}: expected NAME=PATH")
        k, v = item.split("=", 1)
        files[k.strip()] = v.strip()
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    if not ms:
        raise QmedInputError(None, "--methods is empty")
    cfg = ClassifyConfig.from_dict(
        dict(
            weights=weights_option(weights),
            positive=positive,
            image_size=image_size,
            batch_size=batch_size,
            epochs=epochs,
            minutes=minutes,
            lr=lr,
            weight_decay=weight_decay,
            patience=patience,
            qubits=qubits,
            layers=layers,
            class_weights=class_weights,
            seed=seed,
        )
    )
    rows = compare(cfg, data, val, out, ms, files, force=force, device=device)
    console.print(compare_table(rows), markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out / 'compare.md'} and {out / 'compare.json'}", markup=False, highlight=False, soft_wrap=True
    )
