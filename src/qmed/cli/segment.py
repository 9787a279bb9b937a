"""The segmentation verbs, in the user's order: inspect -> train -> predict -> evaluate -> report;
plus the demo and format conversion."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qmed.cli.common import (
    COUNT,
    N_BOOT,
    NNUNET_ID,
    POSITIVE,
    SEED,
    SEG_THRESHOLD,
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
    resolve_cli_config,
    setup_logging,
)
from qmed.errors import QmedInputError

DIAMETER = Rule("at least 1 (pixels)", lo=1)
DEMO_TRAIN = Rule("at least 2", lo=2)


@handle_errors
def inspect(
    data_dir: Path = typer.Argument(..., help="Dataset folder (images/ + masks/) or a CSV list of pairs."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the fingerprint as JSON here."),
    positive: str | None = typer.Option(
        None, help="Classification data: report this class's share (positive vs rest)."
    ),
):
    """Print the dataset fingerprint (sizes, channels, foreground, empty images, objects) and what
    `qmed train --preset auto` would set on it on this machine, with the reasons.

    For classification data (class folders, or a MedMNIST-style .npz) it prints the class counts and imbalance."""
    setup_logging()
    from qmed.data.dataset import IMAGE_DIR_NAMES, find_pairs, fingerprint

    check_file_out(json_out, "--json", "fingerprint.json")
    root = Path(str(data_dir).split(":")[0])
    if root.suffix.lower() == ".npz" or (  # class folders (a symlinked folder is no class of its own)
        root.is_dir()
        and not any((root / n).is_dir() for n in IMAGE_DIR_NAMES)
        and any(q.is_dir() and not q.is_symlink() for q in root.iterdir())
    ):
        from qmed.cli.classify import inspect_cmd

        return inspect_cmd(data_dir, positive)
    import torch

    from qmed.data.planning import plan
    from qmed.io.files import write_json
    from qmed.report.tables import fingerprint_table

    pairs = find_pairs(data_dir)
    fp = fingerprint(pairs)
    console.print(fingerprint_table(fp, str(data_dir), plan(fp, gpu=torch.cuda.is_available())))
    if json_out:
        write_json(json_out, fp)


@handle_errors
def evaluate(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Folder of predictions, one per NAME: masks (0/1, 0/255), probability maps or instance label maps.",
    ),
    truth: Path = typer.Option(
        ..., "--truth", help="Ground truth: a dataset folder (masks/ inside) or a folder of masks."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the summary and per-image figures as JSON here (and a per-image CSV beside it)."
    ),
    threshold: float = typer.Option(
        0.5, help="Probability threshold for probability maps (foreground = value > threshold; 0 <= threshold < 1)."
    ),
    n_boot: int = typer.Option(
        2000, help="Bootstrap resamples for the 95 % confidence intervals (at least 100; 0: no intervals)."
    ),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    pred_kind: str = typer.Option(
        "auto",
        "--pred-kind",
        help=(
            "What the prediction files hold: mask (foreground = non-zero), probability (foreground = value > threshold), "
            "labels (instance label maps, e.g. qmed predict --instances, Cellpose, StarDist), or auto (decided per file and reported)."
        ),
    ),
    instances: bool = typer.Option(
        False,
        "--instances",
        help=(
            "Report the instance figures (DSB2018 mean AP, PQ, count error) also for masks and probability maps, "
            "their connected components as objects (label maps always report them)."
        ),
    ),
):
    """Score predictions from any tool against ground truth (the three Dice figures, IoU, HD95, objects, CIs).

    For predictions written by qmed predict, the table caption and the JSON ("predictions") state
    how they were made (checkpoint, TTA views, threshold), read from PRED/predict.json. Label maps
    (read as such by --pred-kind auto, or told with --pred-kind labels) add the instance figures."""
    setup_logging()
    from qmed.evaluate.folders import describe_kinds, evaluate_folders, summary_table, write_outputs

    check_ranges(("--threshold", threshold, SEG_THRESHOLD), ("--n-boot", n_boot, N_BOOT), ("--seed", seed, SEED))
    check_file_out(out, "--out", "scores.json")
    summary, rows = evaluate_folders(
        pred, truth, threshold=threshold, n_boot=n_boot, seed=seed, pred_kind=pred_kind, instances=instances
    )
    console.print(f"predictions read as {describe_kinds(summary['pred_kinds'], pred_kind)}")
    console.print(summary_table(summary))
    if out:
        j, c = write_outputs(summary, rows, out)
        console.print(f"wrote {j} and {c}")


@handle_errors
def train(
    data: Path | None = typer.Option(None, "--data", help="Training dataset folder (images/ + masks/)."),
    val: Path | None = typer.Option(
        None, "--val", help="Validation dataset folder. Without it, a seeded split of --data is used."
    ),
    out: Path = typer.Option(
        Path("runs/qmed"), "--out", help="Run directory: config.yaml, metrics.csv, checkpoints/, train.log."
    ),
    preset: str = typer.Option(
        "auto",
        help="auto (the default: the cpu recipe with normalisation, crop, augmentation, sampler and (stained tissue) peak LR and, on a CPU, the plain U-Net decoder chosen from the training set's fingerprint, reasons in config.yaml), cpu (MobileNetV2, sized for 2 CPU cores and about 30 minutes), paper (the paper's exact recipe, GPU), tiny (smoke tests).",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file overriding preset fields."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override one field, e.g. --set train.epochs=50 --set model.encoder=resnet34."
    ),
    epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N."),
    minutes: float | None = typer.Option(
        None,
        "--minutes",
        help="Fit the run to this wall-clock budget on this machine: a short calibration, then epochs (at most the preset's) and crops per epoch are set so the whole schedule completes in time.",
    ),
    encoder_weights: str | None = typer.Option(None, help="imagenet, a local .pth file, offline-mobilenet, or none."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from checkpoints/last.pt."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    stop_after: int | None = typer.Option(
        None, "--stop-after-epochs", help="Leave after N epochs of this invocation (continue later with --resume)."
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Skip writing report.md/report.html at the end."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also log scalars to RUN_DIR/tensorboard (needs the tensorboard package)."
    ),
):
    """Train a segmenter; by default the cpu recipe (MobileNetV2 UNet++/SCSE with the edge channel and 4->3 projection, Dice+BCE loss, hard-image sampling) fitted to the data's fingerprint (--preset paper: the paper's exact recipe).

    The default, --preset auto, starts from the cpu preset and sets normalisation, crop size, the
    augmentation family and the sampler from the training set's fingerprint (fluorescence keeps the
    cpu preset's settings; stained colour tissue gets ImageNet statistics, stain jitter, a peak LR of
    2e-3 and, on a CPU, the plain U-Net decoder); each
    choice and its reason is printed and written to config.yaml. The cpu preset: ImageNet
    MobileNetV2 encoder, UNet++ decoder with SCSE attention, Gabor edge channel with the learned
    4->3 projection, 256 px crops, 12 epochs of 680 crops, Dice + BCE loss,
    online hard-image sampling, per-image percentile intensity scaling, AdamW with one-cycle LR,
    bfloat16 on CPUs that have it natively. --preset paper is the paper's exact recipe (EfficientNet-B7,
    512 px, 200 epochs, stabilised loss, complexity-weighted sampling, mixed precision; needs a GPU);
    --preset tiny is a seconds-long smoke test. At the end report.md/html score best.pt without TTA."""
    setup_logging(verbose=True)
    from qmed.segment.train import resume as resume_run
    from qmed.segment.train import train as train_run

    check_ranges(
        ("--epochs", epochs, COUNT), ("--minutes", minutes, POSITIVE), ("--stop-after-epochs", stop_after, COUNT)
    )
    check_device(device)
    if resume is not None and minutes is not None:
        raise QmedInputError(
            resume, "--minutes cannot be combined with --resume (the resumed run keeps its own schedule)"
        )
    if resume is not None:
        run = resume_run(
            resume,
            device=device,
            quiet=quiet,
            train_source=data,
            val_source=val,
            tensorboard=tensorboard,
            stop_after=stop_after,
        )
    else:
        if data is None:
            raise QmedInputError(None, "--data is required (a folder with images/ and masks/)")
        extra: dict = {}
        if epochs is not None:
            extra.setdefault("train", {})["epochs"] = epochs
        if encoder_weights is not None:
            extra.setdefault("model", {})["encoder_weights"] = (
                None if encoder_weights.lower() == "none" else encoder_weights
            )
        check_writable_parent(out)
        cfg = resolve_cli_config(preset, config, set_, extra, data=data)
        if cfg.train.epochs < 1:  # --set train.epochs=0 or a --config file: nothing would be trained
            raise QmedInputError(config, f"train.epochs must be at least 1; got {cfg.train.epochs}")
        if minutes is not None:
            from qmed.segment.budget import fit_to_budget

            cfg, _ = fit_to_budget(cfg, data, val, minutes * 60.0, device, console.print)
        run = train_run(
            cfg, data, val, out, force=force, device=device, quiet=quiet, tensorboard=tensorboard, stop_after=stop_after
        )
    finished = _finished(run)
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if not no_report and finished and not (meta.get("val") or meta.get("val_split")):
        no_report = True  # data.val_fraction=0: nothing held out to score
        console.print(f"no validation images: score the model on held-out data with qmed report {run} --data TEST_DIR")
    if not no_report and finished:
        from qmed.report.run import build_report

        build_report(run, device=device)
    if finished:
        report = "" if no_report else ", report.md/html (best.pt scored without TTA; qmed report --tta for TTA)"
        console.print(f"run written to {run} (checkpoints/best.pt, metrics.csv, config.yaml, train.log{report})")
    else:
        console.print(f"stopped early; continue with: qmed train --resume {run}")


def _finished(run: Path) -> bool:
    return (Path(run) / "summary.json").is_file()


@handle_errors
def predict(
    model: Path = typer.Option(
        ...,
        "--model",
        help="Run directory (uses checkpoints/best.pt), a .pt checkpoint, or a .onnx file from qmed export.",
    ),
    input: Path = typer.Option(
        ...,
        "--input",
        help=(
            "Folder of images (or one image file); or a slide, a folder of slides, or a .txt file listing slides (one path a line)."
        ),
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help=(
            "Output folder: NAME.png masks (0/255) and probabilities/NAME.png (16-bit); for a slide its outputs; for several "
            "slides OUT/NAME/ per slide and OUT/cohort.csv + cohort.json."
        ),
    ),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="7-fold dihedral test-time augmentation."),
    threshold: float | None = typer.Option(
        None, help="Probability threshold, 0 <= threshold < 1 (default: the run's, 0.5)."
    ),
    tile: int | None = typer.Option(
        None, help="Sliding-window size in px for large images, a multiple of 32 (default: the run's)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    rescale: bool | None = typer.Option(
        None,
        "--rescale/--no-rescale",
        help=(
            "Resize each image so its objects' median diameter (measured on a first pass) matches the training "
            "masks' (default: the run's predict.rescale); OUT/scales.json lists the factors."
        ),
    ),
    object_diameter: float | None = typer.Option(
        None,
        "--object-diameter",
        help=(
            "Target object diameter in px for --rescale (default: the training masks' median, recorded by qmed train)."
        ),
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar (it goes to stderr, and only to a terminal)."),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help=(
            "torch, or onnxruntime for a .onnx file from qmed export (same windows, TTA and threshold; needs the onnx extra). "
            "Default: onnxruntime for a .onnx --model, else torch."
        ),
    ),
    instances: bool = typer.Option(
        False,
        "--instances",
        help=(
            "Also split the foreground into objects (watershed of its distance transform): OUT/instances/NAME.png "
            "(16-bit label map) and NAME.csv (id, area, centroid, bounding box, mean probability). The masks are unchanged."
        ),
    ),
    mpp: float | None = typer.Option(
        None,
        "--mpp",
        help=(
            "Slides: the pixel size in microns the model was trained at; the pyramid level nearest it (not coarser) is read "
            "and resized to it (default: level 0 as it is)."
        ),
    ),
    level: int | None = typer.Option(None, "--level", help="Slides: the pyramid level to read (instead of --mpp)."),
    block: int = typer.Option(
        2048, "--block", help="Slides: the side of a block's core in px (a multiple of 32, at least 256)."
    ),
    halo: int | None = typer.Option(
        None,
        "--halo",
        help=(
            "Slides: context around each block's core in px (default: 128 px at the network's scale, at least twice the object diameter)."
        ),
    ),
    tissue_mask: bool = typer.Option(
        True,
        "--tissue-mask/--no-tissue-mask",
        help="Slides: run only the blocks that hold tissue (Otsu on a thumbnail).",
    ),
    probability: bool = typer.Option(
        False, "--probability", help="Slides: also write OUT/probability.ome.tif (uint8, p x 255)."
    ),
    gzip: bool = typer.Option(False, "--gzip", help="Slides: write OUT/objects.geojson.gz instead of objects.geojson."),
    keep_blocks: bool = typer.Option(
        False, "--keep-blocks", help="Slides: keep OUT/blocks (the per-block results) after the outputs are written."
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help=(
            "Slides: run the blocks on this Dask cluster (tcp://HOST:8786, or a scheduler file); its workers need qmed and "
            "the slides' and --out's paths."
        ),
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help=(
            "Slides: worker processes of the local Dask cluster, one torch thread each (default: one per core, at most 8 per GPU; "
            "1: in this process, one torch thread). One slide with less than about four 2048 px blocks of tissue runs here unless this is given."
        ),
    ),
):
    """Predict masks and probability maps for new images of any size, or for a whole slide.

    OUT/predict.json records the checkpoint, TTA views, threshold and tile, which qmed evaluate states.
    A slide (SVS, NDPI, MRXS, SCN, ..., tiled or pyramidal TIFF / OME-TIFF) as --input is predicted block by
    block in bounded memory, and resumed where a killed run stopped when run again: OUT/mask.ome.tif,
    labels.ome.tif (with --instances), objects.csv, objects.geojson (QuPath detections), tissue.png, predict.json."""
    setup_logging()
    from qmed.segment.predict import predict_folder

    check_ranges(
        ("--threshold", threshold, SEG_THRESHOLD),
        ("--tile", tile, TILE),
        ("--object-diameter", object_diameter, DIAMETER),
    )
    check_device(device)
    check_writable_parent(out)
    from qmed.io.slides import is_slide

    cohort = _is_cohort(input)
    if is_slide(input) or cohort:
        from qmed.cli.common import NON_NEGATIVE

        check_ranges(
            ("--mpp", mpp, POSITIVE),
            ("--level", level, NON_NEGATIVE),
            ("--halo", halo, NON_NEGATIVE),
            ("--workers", workers, COUNT),
        )
        if rescale or object_diameter is not None:
            raise QmedInputError(
                input,
                "--rescale and --object-diameter are for images; for a slide give the model's pixel size with --mpp",
            )
        kw = dict(
            tta=tta,
            threshold=threshold,
            tile=tile,
            force=force,
            device=device,
            backend=backend,
            instances=instances,
            mpp=mpp,
            level=level,
            block=block,
            halo=halo,
            tissue=tissue_mask,
            probability=probability,
            gzip=gzip,
            keep_blocks=keep_blocks,
        )
        if cohort:
            return _predict_cohort(model, input, out, quiet, scheduler, workers, **kw)
        if scheduler is None and workers == 1:
            return _predict_slide(model, input, out, quiet=quiet, **kw)
        return _predict_slide_on_dask(model, input, out, quiet, scheduler, workers, **kw)
    if scheduler is not None or workers is not None:
        raise QmedInputError(input, "--scheduler and --workers are for slides; images are predicted in this process")
    n = predict_folder(
        model,
        input,
        out,
        tta=tta,
        threshold=threshold,
        tile=tile,
        force=force,
        device=device,
        rescale=rescale,
        object_diameter=object_diameter,
        quiet=quiet,
        backend=backend,
        instances=instances,
        say=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True),
    )
    console.print(
        f"wrote {n} masks to {out} and probability maps to {out / 'probabilities'} (settings in {out / 'predict.json'})"
    )
    if instances:
        console.print(
            f"wrote {n} label maps and object tables to {out / 'instances'} (qmed evaluate --pred {out / 'instances'} scores them)"
        )


def _is_cohort(path: Path) -> bool:
    """A .txt list of slides, or a folder that holds slides (a folder of images is predicted as before)."""
    from qmed.io.slides import is_slide

    if path.is_file():
        return path.suffix.lower() == ".txt"
    return path.is_dir() and any(is_slide(p) for p in path.iterdir())


def _predict_cohort(
    model: Path, inputs: Path, out: Path, quiet: bool, scheduler: str | None, workers: int | None, **kw
) -> None:
    """`qmed predict --input FOLDER_OF_SLIDES|LIST.txt`: qmed.segment.cohort; exit 1 when a slide failed."""
    from qmed.segment.cohort import COHORT_CSV, COHORT_JSON, all_succeeded, predict_cohort

    say = lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    rows = predict_cohort(
        model, inputs, out, scheduler=scheduler, workers=workers, progress=False if quiet else None, say=say, **kw
    )
    counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "skipped", "failed")}
    say(
        f"{len(rows)} slide{'' if len(rows) == 1 else 's'}: {counts['done']} done, {counts['skipped']} finished earlier (skipped), {counts['failed']} failed; "
        f"{sum(r['objects'] or 0 for r in rows)} objects; table: {out / COHORT_CSV} and {out / COHORT_JSON}"
    )
    for r in rows:
        if r["status"] == "failed":
            err_console.print(f"failed: {r['reason']}", markup=False, highlight=False, soft_wrap=True)
    if not all_succeeded(rows):
        raise typer.Exit(1)


def _predict_slide_on_dask(
    model: Path, slide: Path, out: Path, quiet: bool, scheduler: str | None, workers: int | None, **kw
) -> None:
    """One slide through qmed.segment.cohort: its blocks on a Dask cluster (or here, when it is small)."""
    from qmed.evaluate.folders import PREDICTION_META
    from qmed.segment.cohort import predict_cohort

    say = lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    rows = predict_cohort(
        model, slide, out, scheduler=scheduler, workers=workers, progress=False if quiet else None, say=say, **kw
    )
    if rows[0]["status"] == "skipped":
        say(f"{slide}: finished earlier with the same model and settings in {out} (--force redoes it)")
    _slide_summary(slide, out, json.loads((out / PREDICTION_META).read_text()))


def _predict_slide(model: Path, slide: Path, out: Path, **kw) -> None:
    """`qmed predict --input SLIDE --workers 1`: qmed.segment.slide, in this process."""
    from qmed.segment.slide import predict_slide

    _slide_summary(slide, out, predict_slide(model, slide, out, **kw))


def _slide_summary(slide: Path, out: Path, meta: dict) -> None:
    c = meta["counts"]
    console.print(
        f"{slide}: {c['objects']} objects from {c['blocks_run']} of {c['blocks']} blocks (level {meta['level']}, "
        f"{meta['size'][0]} x {meta['size'][1]} px); wrote {', '.join(meta['outputs'])} and predict.json to {out}",
        markup=False,
        highlight=False,
    )


@handle_errors
def export(
    model: Path = typer.Option(..., "--model", help="Run directory (uses checkpoints/best.pt) or a .pt checkpoint."),
    out: Path = typer.Option(
        ..., "--out", help="The ONNX file to write (its JSON sidecar goes beside it as OUT.json)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out (and its sidecar)."),
    opset: int = typer.Option(
        17, "--opset", help="ONNX opset (17 up to the newest torch's exporter writes, 23 with torch 2.14)."
    ),
):
    """Export a segmentation model to ONNX: normalisation, edge channel, projection, network and sigmoid in one graph.

    Input "image": float32 N x 3 x H x W in [0, 1] (gray repeated to 3 channels), H and W multiples of 32
    (reflect-pad the bottom and right, crop the output back); output "probability": N x C x H x W (C = 1, or 2 with the contact head: foreground,
    contact). The file's
    metadata (and OUT.json) hold the threshold, TTA views, tile and the run's config, so
    qmed predict --backend onnxruntime --model OUT needs nothing else. Needs the onnx extra (pip install onnx onnxruntime)."""
    setup_logging()
    from qmed.io.checkpoints import resolve_checkpoint
    from qmed.segment.export import SUPPORTED_OPSETS, export_onnx, sidecar_path

    check_ranges(
        (
            "--opset",
            opset,
            Rule(
                f"between {SUPPORTED_OPSETS[0]} and {SUPPORTED_OPSETS[-1]} (what this torch's exporter "
                "writes and qmed checks)",
                lo=SUPPORTED_OPSETS[0],
                hi=SUPPORTED_OPSETS[-1],
            ),
        )
    )
    if out.suffix.lower() != ".onnx":  # qmed predict tells an ONNX model from a checkpoint by the suffix
        raise QmedInputError(
            out,
            "--out must end in .onnx (qmed predict reads a model by its suffix), e.g. "
            f"{out.with_name(out.name + '.onnx')}",
        )
    check_writable_parent(out)
    ckpt = resolve_checkpoint(model)
    if model.is_dir() and ckpt.name != "best.pt":
        console.print(f"note: {model} has no checkpoints/best.pt; exporting {ckpt.name}", markup=False, highlight=False)
    meta = export_onnx(model, out, force=force, opset=opset)
    console.print(
        f"wrote {out} and {sidecar_path(out)} (opset {meta['opset']}; ONNX Runtime against torch on a check image: "
        f"max |difference| {meta['check']['max_abs_diff_vs_torch']:.1e})"
    )


@handle_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by qmed train."),
    data: Path | None = typer.Option(None, "--data", help="Images + masks to show (default: the run's --val folder)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Score with 7-fold test-time augmentation."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
):
    """Write report.md and a self-contained report.html: curves, metrics with CIs, best/worst cases.

    The metrics score checkpoints/best.pt on the run's validation images (or --data), without TTA
    unless --tta; the report's metrics section says which."""
    setup_logging()
    from qmed.report.run import build_report

    check_device(device)
    md = build_report(run_dir, data, tta=tta, device=device)
    console.print(f"wrote {md} and {md.with_suffix('.html')} (figures in {md.parent / 'figures'})")


@handle_errors
def demo(
    out: Path = typer.Option(Path("qmed-demo"), "--out", help="Where the synthetic data, run and predictions go."),
    minutes: float = typer.Option(3.0, help="Training time budget in minutes (CPU)."),
    preset: str = typer.Option("cpu", help="Preset to train (tiny for a smoke test)."),
    n_train: int = typer.Option(48, help="Synthetic training images."),
    n_val: int = typer.Option(12, help="Synthetic validation images."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out folder."),
):
    """Generate synthetic fluorescence nuclei, train the cpu recipe for a few minutes, write its report, predict and evaluate."""
    setup_logging(verbose=True)
    from qmed.experiments.demo import run_demo

    check_ranges(("--minutes", minutes, POSITIVE), ("--n-train", n_train, DEMO_TRAIN), ("--n-val", n_val, COUNT))
    check_preset(preset, auto=False)
    check_writable_parent(out)

    run_demo(out, minutes=minutes, n_train=n_train, n_val=n_val, force=force, console=console, preset=preset)


@handle_errors
def convert(
    to: str | None = typer.Option(None, "--to", help="Write another tool's format: nnunet."),
    from_: str | None = typer.Option(None, "--from", help="Read another tool's format into qmed's layout: nnunet."),
    data: Path = typer.Option(
        ..., "--data", help="--to: a qmed dataset folder. --from: an nnU-Net DatasetXXX_Name folder."
    ),
    val: Path | None = typer.Option(
        None, "--val", help="--to: a qmed dataset written as imagesTs/labelsTs. --from: where imagesTs/labelsTs go."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="--to: the nnUNet_raw folder (DatasetXXX_Name is made inside). --from: the qmed dataset folder.",
    ),
    dataset_id: int = typer.Option(
        501, "--dataset-id", help="nnU-Net dataset ID (1-999; custom datasets start at 500)."
    ),
    name: str = typer.Option("Qmed", "--name", help="nnU-Net dataset name: DatasetXXX_NAME."),
    label_name: str = typer.Option(
        "foreground", "--label-name", help="Name of label 1 in dataset.json (e.g. nucleus)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty output folder."),
):
    """Convert a dataset to or from nnU-Net v2's raw format (2-D PNG; masks 0/1 there, 0/255 here)."""
    setup_logging()
    from qmed.data.nnunet import from_nnunet, to_nnunet

    if (to is None) == (from_ is None):
        raise QmedInputError(None, "give exactly one of --to nnunet or --from nnunet")
    fmt = (to or from_).lower()
    if fmt != "nnunet":
        raise QmedInputError(None, f"unknown format {fmt!r}; qmed converts to and from: nnunet")
    check_ranges(("--dataset-id", dataset_id, NNUNET_ID))
    check_writable_parent(out)
    if from_ is not None:
        check_writable_parent(val, "--val")
    if to is not None:
        ds = to_nnunet(data, out, dataset_id=dataset_id, name=name, val=val, label_name=label_name, force=force)
        console.print(f"wrote {ds} (imagesTr/, labelsTr/{', imagesTs/, labelsTs/' if val else ''}, dataset.json)")
    else:
        n_tr, n_ts = from_nnunet(data, out, val_out=val, force=force)
        console.print(f"wrote {n_tr} pairs to {out}" + (f" and {n_ts} images to {val}" if val is not None else ""))
