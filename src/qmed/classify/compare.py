"""`qmed classify compare`: the baselines and the quantum model trained on one split with one budget, in one table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmed.classify.data import load_split
from qmed.classify.train import train_classifier
from qmed.config import ClassifyConfig
from qmed.errors import QmedInputError
from qmed.io.files import check_output, input_paths, write_json, write_text

log = logging.getLogger("qmed")


@dataclass
class CompareRow:
    method: str
    status: str = "ok"
    summary: dict[str, Any] = field(default_factory=dict)


def compare(
    base: ClassifyConfig,
    train_spec,
    val_spec,
    out: Path,
    methods: Sequence[str],
    weights_files: dict[str, str],
    force: bool = False,
    device: str | None = None,
) -> list[CompareRow]:
    """Train every method on one split with one budget (base.minutes per method); -> rows."""
    from qmed.models.classifier import build_classifier

    out = Path(out)
    check_output(out, force, "output directory", inputs=input_paths(train_spec, val_spec))
    data = load_split(train_spec, val_spec, base)
    rows: list[CompareRow] = []
    for method in methods:
        use_pqc = method.endswith("+pqc")
        name = method[: -len("+pqc")] if use_pqc else method
        cfg = ClassifyConfig.from_dict(
            {**base.model_dump(), "model": name, "pqc": use_pqc, "weights": weights_files.get(name, base.weights)}
        )
        try:  # weights first: an unavailable download skips the row instead of ending the comparison
            build_classifier(cfg.model, len(data[0].classes), cfg.weights, None)
        except QmedInputError as exc:
            log.warning("%s: skipped (%s)", method, exc)
            rows.append(CompareRow(method, f"skipped: {exc}"))
            continue
        log.info("=== %s ===", method)
        summary = train_classifier(
            cfg, None, None, out / method.replace("+", "_"), force=True, device=device, data=data
        )
        rows.append(CompareRow(method, "ok", summary))
    table = compare_table(rows)
    write_text(out / "compare.md", table + "\n")
    write_json(
        out / "compare.json",
        [{"method": r.method, "status": r.status, **({"summary": r.summary} if r.summary else {})} for r in rows],
    )
    return rows


def compare_table(rows: Sequence[CompareRow]) -> str:
    head = "| method | AUC [95 % CI] | accuracy | balanced acc. | F1 | sensitivity | specificity | steps | seconds | PQC share of step |"
    ncol = head.count("|") - 1
    lines = [head, "|" + "---|" * ncol]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.method} | {r.status} |" + " |" * (ncol - 2))
            continue
        s, m = r.summary, r.summary["val_metrics"]
        share = s["profile"].get("pqc_share")
        lines.append(
            f"| {r.method} | {m['auc']['value']:.4f} [{m['auc']['ci_low']:.4f}, {m['auc']['ci_high']:.4f}] | "
            f"{m['accuracy']['value']:.4f} | {m['balanced_accuracy']['value']:.4f} | {m['f1']['value']:.4f} | "
            f"{m['sensitivity']['value']:.4f} | {m['specificity']['value']:.4f} | {s['steps']} | {s['train_seconds']:.0f} | "
            f"{'' if share is None else f'{100 * share:.1f} %'} |"
        )
    return "\n".join(lines)
