"""Rich tables for the terminal."""

from __future__ import annotations

from rich.table import Table


def fingerprint_table(fp: dict, title: str) -> Table:
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
    t.add_row("object size (px)", f"median {os_['median']:.0f}, 5-95 % {os_['p5']:.0f}-{os_['p95']:.0f}; {os_['small_lt_50']} of {os_['n']} objects < 50 px")
    if fp.get("object_diameter_px"):
        t.add_row("object diameter (px)", f"{fp['object_diameter_px']:.1f} (median over images of the mask components' median)")
    t.add_row("suggested crop", f"{fp['suggested_crop']} px")
    t.add_row("suggested preset", f"{fp['suggested_preset']}  ({fp['suggestion_note']})")
    t.add_row("fingerprint hash", fp["hash"])
    return t
