"""Tables of results: rich tables for the terminal and Markdown tables for the docs, shared by
every verb that prints figures (benchmark quality, ablate, curve, inspect).

A "figure" is {mean, ci: [low, high], n}; cells show the mean with its 95 % CI where there is one."""

from __future__ import annotations

import math

from rich.table import Table


def fingerprint_table(fp: dict, title: str, plan: tuple[dict, dict[str, str]] | None = None) -> Table:
    """The fingerprint's rows, then, given `plan` (qmed.data.planning.plan's settings and reasons),
    what `qmed train --preset auto` would set on this data and machine, and why."""
    t = Table(title=f"dataset fingerprint: {title}", show_header=True, header_style="bold")
    t.add_column("property")
    t.add_column("value")
    sizes = ", ".join(f"{k} ({v})" for k, v in list(fp["sizes"].items())[:6]) + (" ..." if len(fp["sizes"]) > 6 else "")
    ff = fp["foreground_fraction"]
    op = fp["objects_per_image"]
    os_ = fp["object_size_px"]
    t.add_row("pairs", str(fp["n_pairs"]))
    t.add_row("image sizes (WxH, count)", sizes)
    t.add_row("channels", ", ".join(map(str, fp["channels"])))
    t.add_row("foreground fraction per image", f"min {ff['min']:.4f} / median {ff['median']:.4f} / max {ff['max']:.4f}")
    t.add_row("empty images", f"{fp['empty_fraction']:.1%}")
    t.add_row("objects per image", f"min {op['min']} / median {op['median']:.0f} / max {op['max']}")
    t.add_row(
        "object size (px)",
        f"median {os_['median']:.0f}, 5-95 % {os_['p5']:.0f}-{os_['p95']:.0f}; {os_['small_lt_50']} of {os_['n']} objects < 50 px",
    )
    if fp.get("object_diameter_px"):
        t.add_row(
            "object diameter (px)",
            f"{fp['object_diameter_px']:.1f} (median over images of the mask components' median)",
        )
    over, why = plan or ({}, {})
    t.add_row("modality", why.get("modality", fp.get("modality", "?")))
    for key, reason in why.items():
        if key == "modality":
            continue
        node = over
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        value = "" if isinstance(node, dict) else f"{node}: "  # a reason without a setting of its own
        t.add_row(f"auto {key}", value + reason)
    t.add_row("fingerprint hash", fp["hash"])
    return t


def fmt_figure(fig: dict | None, digits: int = 3) -> str:
    if not fig:
        return "-"
    m = fig.get("mean")
    if m is None or not math.isfinite(m):
        return "n/a"
    lo, hi = fig.get("ci", [float("nan")] * 2)
    ci = (
        f" [{lo:.{digits}f}, {hi:.{digits}f}]"
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
        else ""
    )
    return f"{m:.{digits}f}{ci}"


def figure_cell(fig: dict | None, digits: int = 3, ci: bool = True) -> str:
    """A terminal table cell: the mean, and (with `ci`) its CI on a second line, 2 decimals."""
    if not fig or fig.get("mean") is None or not math.isfinite(fig["mean"]):
        return "-" if not fig else "n/a"
    lo, hi = fig.get("ci") or [None, None]
    has_ci = ci and lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    return f"{fig['mean']:.{digits}f}" + (f"\n[{lo:.{min(digits, 2)}f}, {hi:.{min(digits, 2)}f}]" if has_ci else "")


COMPACT_FIGURES = [
    ("Dice\nempty=1", "dice_empty1", 3, True),
    ("Dice\npooled", "dice_pooled", 3, False),
    ("IoU\nfg", "iou_fg", 3, False),
    ("HD95\npx", "hd95", 1, False),
    ("BF1", "boundary_f1", 3, False),
    ("small\nrecall", "small_object_recall", 3, False),
]


def compact_table(title: str, lead: list[str], rows: list[tuple[list[str], dict]]):
    """A terminal table that fits 80 columns: the `lead` columns (the first never wraps), then the main
    figures, the CI under the per-image Dice only. `rows`: (lead cells, figures) per row."""
    from rich import box

    t = Table(title=title, box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for i, name in enumerate(lead):
        t.add_column(name, no_wrap=i == 0)
    for label, *_ in COMPACT_FIGURES:
        t.add_column(label, justify="right", no_wrap=True)
    for cells, figures in rows:
        t.add_row(
            *cells, *[figure_cell((figures or {}).get(key), digits, ci) for _, key, digits, ci in COMPACT_FIGURES]
        )
    return t


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; '|' inside a cell becomes '/'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# The figures of the `qmed ablate` / `qmed curve` Markdown tables: (column, figures key, digits).
MD_FIGURES = [
    ("Dice empty=1 [95% CI]", "dice_empty1", 3),
    ("Dice fg", "dice_fg", 3),
    ("Dice pooled [95% CI]", "dice_pooled", 3),
    ("IoU fg", "iou_fg", 3),
    ("HD95 px", "hd95", 1),
    ("boundary F1", "boundary_f1", 3),
    ("small-obj recall", "small_object_recall", 3),
]


def md_figures(row: dict) -> list[str]:
    f = row.get("figures") or {}
    return [fmt_figure(f.get(key), digits) for _, key, digits in MD_FIGURES]


def status_text(row: dict) -> str:
    return "ok" if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}"
