"""`qmed demo`: the whole road on data that needs no download.

Synthetic fluorescence nuclei (seeded) -> train the `cpu` recipe for a few minutes -> write the run
report (as `qmed train` does) -> predict the validation images with TTA and `--instances` ->
evaluate the label maps (so the object rows are qmed's own split of touching nuclei, not connected
components of the masks) -> print where everything is and the `qmed report` command that re-draws
the report.
"""

from __future__ import annotations

import time
from pathlib import Path

from qmed.config import resolve_config


def run_demo(
    out: Path,
    minutes: float = 3.0,
    n_train: int = 48,
    n_val: int = 12,
    force: bool = False,
    console=None,
    seed: int = 0,
    preset: str = "cpu",
) -> dict:
    from qmed.data.synthetic import write_demo_splits
    from qmed.evaluate.folders import evaluate_folders, summary_table, write_outputs
    from qmed.io.files import prepare_output_dir
    from qmed.report.run import build_report
    from qmed.segment.budget import fit_to_budget
    from qmed.segment.instances import INSTANCES_DIR
    from qmed.segment.predict import predict_folder
    from qmed.segment.train import train

    out = Path(out)
    prepare_output_dir(out, force, what="demo folder", verb="demo")
    say = console.print if console is not None else print
    t0 = time.time()
    train_dir, val_dir = write_demo_splits(out / "data", n_train, n_val, (256, 256), seed)
    say(f"synthetic data: {n_train} train / {n_val} val images in {out / 'data'}")
    # Fit epochs and crops per epoch to the budget on this machine (as `qmed train --minutes`), so
    # the demo uses its minutes whatever the CPU's speed or precision (bfloat16 halves a step).
    cfg, _ = fit_to_budget(resolve_config(preset), train_dir, val_dir, minutes * 60.0, None, say)
    run = train(cfg, train_dir, val_dir, out / "run", quiet=False)
    # best.pt on the validation images without TTA (what `qmed train` writes at the end).
    report = build_report(run)
    preds = out / "predictions"
    predict_folder(run, val_dir / "images", preds, tta=True, instances=True)
    labels = preds / INSTANCES_DIR
    summary, rows = evaluate_folders(labels, val_dir, pred_kind="labels")
    write_outputs(summary, rows, out / "evaluation.json")
    say(summary_table(summary))
    split = (
        "the contact head and distance watershed"
        if summary.get("predictions", {}).get("instance_split") == "contact+distance"
        else "a distance watershed"
    )
    say(
        f"scored: the label maps of qmed predict --instances ({labels}); objects are qmed's split of touching nuclei "
        f"({split}), not connected components of the masks; the pixel rows score their foreground"
    )
    say(
        f"done in {(time.time() - t0) / 60:.1f} min. run: {run}  predictions (TTA): {preds}  label maps: {labels}  "
        f"scores: {out / 'evaluation.json'}"
    )
    say(
        f"report (best.pt, no TTA): {report} and {report.with_suffix('.html')}; "
        f"re-draw it with: qmed report {run}  (add --tta to score it as the predictions above)"
    )
    return summary
