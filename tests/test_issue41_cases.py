"""Issue 41, items 2, 3 and 6-10: impossible values refused, every failure one line, strict JSON, warnings.

One table: each row is a command line, the exit code it must end with, a piece of its one line (or,
for a command that works, of what it says), and what must (not) be on disk afterwards. A row that
must fail expects exit code 2, exactly one line of output that starts with "error: ", no traceback,
and nothing written. The output-safety rows (--out over the input, --force, staging, kill -9) are in
the lead's own test file.

Placeholders in a row: {ds} a tiny dataset (images/ + masks/), {run} a tiny trained run, {tmp} the
row's own temporary folder, plus whatever the row's `setup` returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.cli.common import handle_errors

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (what strict parsers do)."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


# --- tiny synthetic data ----------------------------------------------------------------------


def blob_mask(h=64, w=64, shift=0):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - h // 2) ** 2 + (xx - w // 3 - shift) ** 2 < (min(h, w) // 5) ** 2).astype(np.uint8) * 255
    m[2:6, w - 8 : w - 3] = 255
    return m


def image_for(mask, seed=0):
    noise = np.random.default_rng(seed).integers(0, 30, mask.shape)
    return np.clip(noise + (mask > 0) * 180, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n=4, mask_fn=None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = blob_mask(shift=i)
        Image.fromarray(image_for(m, i)).save(root / "images" / f"img{i}.png")
        Image.fromarray(m if mask_fn is None else mask_fn(i, m)).save(root / "masks" / f"img{i}.png")
    return root


def class_map(i, m):
    """0/1/2: two classes, each in two separate regions (as a semantic label map is)."""
    c = np.zeros_like(m)
    c[5:15, 5:15] = c[40:50, 40:50] = 1
    c[5:15, 40:50] = c[40:50, 5:15] = 2
    return c


def class_folders(root: Path, link: bool = False) -> Path:
    for c in ("benign", "malignant"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(image_for(blob_mask(32, 32), i)).save(root / c / f"{c}{i}.png")
    if link:  # a symlinked folder is no class: it would count benign's images twice
        os.symlink(root / "benign", root / "benign_copy")
    return root


def npz(path: Path, damage: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 2, (40, 1))
    np.savez_compressed(path, train_images=x, train_labels=y, val_images=x[:10], val_labels=y[:10])
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "corrupt":  # a member's bytes flipped, the archive's directory intact
        for i in range(len(data) // 3, len(data) // 3 + 50):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    return path


def unwritable_dir(tmp: Path) -> Path | None:
    """A folder this user cannot create anything in: a read-only folder, or (as root, who may write
    anywhere on a normal disk) a kernel file system such as /sys. None when there is none."""
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for cand in (locked, Path("/sys")):
        try:
            (cand / "qmed-probe").mkdir()
        except OSError:
            return cand
        (cand / "qmed-probe").rmdir()
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("issue41")
    ds = make_dataset(root / "ds")
    run = root / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(ds),
            "--out",
            str(run),
            "--quiet",
            "--no-report",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    return {"ds": str(ds), "run": str(run)}


# --- the table --------------------------------------------------------------------------------


@dataclass
class Case:
    argv: str  # the command line, split on spaces after the placeholders are filled in
    code: int  # the exit code
    says: str  # code 2: a piece of the one line; code 0: a piece of the output or of a warning
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards
    present: tuple[str, ...] = ()  # paths that must exist afterwards
    not_said: str | None = None  # must not appear in the output
    setup: Callable[[Path, dict], dict] | None = None  # more placeholders (builds files in the row's folder)
    needs: str | None = None  # "onnx": onnx and onnxruntime installed; "unwritable": such a folder exists
    file_says: tuple[str, str] | None = None  # (path, text the file must hold)


def _no_best(tmp: Path, env: dict) -> dict:
    run = tmp / "run_without_best"
    shutil.copytree(env["run"], run)
    (run / "checkpoints" / "best.pt").unlink()
    return {"nobest": str(run)}


def _probability_maps(tmp: Path, env: dict) -> dict:
    """16-bit probability maps with thousands of distinct values: not label maps."""
    pred = tmp / "prob"
    pred.mkdir()
    for i in range(4):
        yy, xx = np.mgrid[:64, :64]
        p = np.exp(-((yy - 32.0) ** 2 + (xx - 21.0 - i) ** 2) / 300.0)
        Image.fromarray((p * 65535).astype(np.uint16)).save(pred / f"img{i}.png")
    return {"prob": str(pred)}


def _collision(tmp: Path, env: dict) -> dict:
    inp = tmp / "in"
    inp.mkdir()
    img = image_for(blob_mask())
    Image.fromarray(img).save(inp / "scan_01.png")
    Image.fromarray(img).save(inp / "scan_01.tif")
    return {"inp": str(inp)}


def _file_in_the_way(tmp: Path, env: dict) -> dict:
    (tmp / "afile").write_text("not a folder")
    return {"afile": str(tmp / "afile")}


def _unwritable(tmp: Path, env: dict) -> dict:
    d = unwritable_dir(tmp)
    return {"ro": str(d)} if d is not None else {}


def _folder(tmp: Path, env: dict) -> dict:
    (tmp / "adir").mkdir()
    return {"adir": str(tmp / "adir")}


def _classes(tmp: Path, env: dict) -> dict:
    return {"cls": str(class_folders(tmp / "cls", link=True))}


def _npzs(tmp: Path, env: dict) -> dict:
    return {
        "good": str(npz(tmp / "m.npz")),
        "trunc": str(npz(tmp / "t.npz", "truncated")),
        "corrupt": str(npz(tmp / "c.npz", "corrupt")),
    }


def _empty_masks(tmp: Path, env: dict) -> dict:
    return {"empty": str(make_dataset(tmp / "empty", 3, lambda i, m: np.zeros_like(m)))}


def _class_maps(tmp: Path, env: dict) -> dict:
    return {"classmaps": str(make_dataset(tmp / "classmaps", 3, class_map))}


GPU_WORD = "cuda:99"  # a GPU no machine has (and on a machine without CUDA, plain cuda fails too)
OUT = "{tmp}/out"

CASES: dict[str, Case] = {
    # item 2: numeric options out of range, refused before anything is read or written
    "predict --threshold 1.5": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --threshold 1.5",
        2,
        "--threshold must be at least 0 and below 1",
        absent=(OUT,),
    ),
    "predict --threshold nan": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --threshold nan",
        2,
        "--threshold must be a finite number",
        absent=(OUT,),
    ),
    "predict --threshold -0.1": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --threshold -0.1",
        2,
        "--threshold must be",
        absent=(OUT,),
    ),
    "predict --tile 7": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --tile 7",
        2,
        "--tile must be a multiple of 32 and at least 32",
        absent=(OUT,),
    ),
    "predict --tile -64": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --tile -64", 2, "got -64", absent=(OUT,)
    ),
    "predict --tile 0": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --tile 0", 2, "--tile must be", absent=(OUT,)
    ),
    "predict --object-diameter 0.5": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --rescale --object-diameter 0.5",
        2,
        "--object-diameter must be at least 1",
        absent=(OUT,),
    ),
    "evaluate --n-boot 5": Case(
        "evaluate --pred {ds}/masks --truth {ds} --n-boot 5 --out {tmp}/s.json",
        2,
        "--n-boot must be 0 (no confidence intervals) or at least 100",
        absent=("{tmp}/s.json",),
    ),
    "evaluate --n-boot -5": Case("evaluate --pred {ds}/masks --truth {ds} --n-boot -5", 2, "got -5"),
    "evaluate --n-boot 0: no intervals": Case(
        "evaluate --pred {ds}/masks --truth {ds} --n-boot 0 --out {tmp}/s.json",
        0,
        "no confidence intervals (--n-boot 0)",
        present=("{tmp}/s.json",),
        not_said="95% CI",
        file_says=("{tmp}/s.json", '"ci_low": null'),
    ),
    "evaluate --threshold inf": Case(
        "evaluate --pred {ds}/masks --truth {ds} --threshold inf", 2, "--threshold must be a finite number"
    ),
    "evaluate --seed -1": Case(
        "evaluate --pred {ds}/masks --truth {ds} --seed -1", 2, "--seed must be between 0 and 2**32 - 1"
    ),
    "train --epochs 0": Case(
        f"train --preset tiny --data {{ds}} --out {OUT} --epochs 0",
        2,
        "--epochs must be at least 1; got 0",
        absent=(OUT,),
    ),
    "train --set train.epochs=0": Case(
        f"train --preset tiny --data {{ds}} --out {OUT} --set train.epochs=0",
        2,
        "train.epochs must be at least 1; got 0",
        absent=(OUT,),
    ),
    "train --minutes nan": Case(
        f"train --preset tiny --data {{ds}} --out {OUT} --minutes nan",
        2,
        "--minutes must be a finite number",
        absent=(OUT,),
    ),
    "train --stop-after-epochs 0": Case(
        f"train --preset tiny --data {{ds}} --out {OUT} --stop-after-epochs 0",
        2,
        "--stop-after-epochs must be at least 1",
        absent=(OUT,),
    ),
    "train --preset unknown lists auto": Case(
        f"train --preset fast --data {{ds}} --out {OUT}",
        2,
        "unknown preset 'fast'; choose one of auto, cpu, paper, tiny",
        absent=(OUT,),
    ),
    "export --opset 99: one line, no graph": Case(
        "export --model {run} --out {tmp}/m.onnx --opset 99",
        2,
        "--opset must be between 17 and ",
        absent=("{tmp}/m.onnx", "{tmp}/m.onnx.json"),
    ),
    "export --opset 16": Case(
        "export --model {run} --out {tmp}/m.onnx --opset 16", 2, "--opset must be between 17", absent=("{tmp}/m.onnx",)
    ),
    "convert --dataset-id 0": Case(
        f"convert --to nnunet --data {{ds}} --out {OUT} --dataset-id 0",
        2,
        "--dataset-id must be between 1 and 999",
        absent=(OUT,),
    ),
    "demo --minutes 0": Case(f"demo --out {OUT} --minutes 0", 2, "--minutes must be greater than 0", absent=(OUT,)),
    "demo --n-train 1": Case(f"demo --out {OUT} --n-train 1", 2, "--n-train must be at least 2", absent=(OUT,)),
    "demo --preset auto": Case(
        f"demo --out {OUT} --preset auto", 2, "unknown preset 'auto'; choose one of cpu", absent=(OUT,)
    ),
    "classify train --epochs 0": Case(
        f"classify train --data {{tmp}}/x --out {OUT} --epochs 0", 2, "--epochs must be at least 1", absent=(OUT,)
    ),
    "classify train --lr nan": Case(
        f"classify train --data {{tmp}}/x --out {OUT} --lr nan", 2, "--lr must be a finite number", absent=(OUT,)
    ),
    "classify train --batch-size 1": Case(
        f"classify train --data {{tmp}}/x --out {OUT} --batch-size 1",
        2,
        "--batch-size must be at least 2",
        absent=(OUT,),
    ),
    "classify train --qubits 0": Case(
        f"classify train --data {{tmp}}/x --out {OUT} --qubits 0", 2, "--qubits must be between 1 and 20", absent=(OUT,)
    ),
    "classify evaluate --threshold 1": Case(
        "classify evaluate --model {tmp}/r --data {tmp}/x --threshold 1", 2, "--threshold must be above 0 and below 1"
    ),
    "classify evaluate --n-boot 50": Case(
        "classify evaluate --model {tmp}/r --data {tmp}/x --n-boot 50", 2, "--n-boot must be 0"
    ),
    "classify predict --threshold 0": Case(
        "classify predict --model {tmp}/r --input {tmp}/x --out {tmp}/p.csv --threshold 0",
        2,
        "--threshold must be above 0",
        absent=("{tmp}/p.csv",),
    ),
    "classify compare --minutes 0": Case(
        f"classify compare --data {{tmp}}/x --out {OUT} --minutes 0",
        2,
        "--minutes must be greater than 0",
        absent=(OUT,),
    ),
    "benchmark speed --size 40": Case("benchmark speed --size 40", 2, "--size must be a multiple of 32"),
    "benchmark speed --steps 0": Case("benchmark speed --steps 0", 2, "--steps must be at least 1"),
    "benchmark quality --n-boot 0": Case(
        f"benchmark quality --data {{ds}} --val {{ds}} --out {OUT} --n-boot 0",
        2,
        "--n-boot must be at least 100",
        absent=(OUT,),
    ),
    "benchmark suite --minutes -1": Case(
        f"benchmark suite --data-root {{tmp}} --out {OUT} --minutes -1",
        2,
        "--minutes must be greater than 0",
        absent=(OUT,),
    ),
    "ablate --al-start 0": Case(
        f"ablate --data {{ds}} --val {{ds}} --out {OUT} --al-start 0",
        2,
        "--al-start must be above 0 and at most 1",
        absent=(OUT,),
    ),
    "ablate --mc-passes 1": Case(
        f"ablate --data {{ds}} --val {{ds}} --out {OUT} --mc-passes 1",
        2,
        "--mc-passes must be at least 2",
        absent=(OUT,),
    ),
    "curve --budget nan": Case(
        f"curve --data {{ds}} --val {{ds}} --out {OUT} --budget nan",
        2,
        "--budget must be a finite number",
        absent=(OUT,),
    ),
    "pretrain simclr --temperature 0": Case(
        f"pretrain simclr --data {{tmp}}/x --out {OUT} --temperature 0",
        2,
        "--temperature must be greater than 0",
        absent=(OUT,),
    ),
    "synthesize --n 0": Case(
        f"synthesize --data {{tmp}}/x --n 0 --out {OUT}", 2, "--n must be at least 1", absent=(OUT,)
    ),
    "synthesize --image-size 30": Case(
        f"synthesize --data {{tmp}}/x --n 4 --out {OUT} --image-size 30",
        2,
        "--image-size must be a multiple of 4",
        absent=(OUT,),
    ),
    # --device against what exists
    "predict --device gpu": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --device gpu",
        2,
        "--device 'gpu' is not a device; use cpu, cuda or cuda:N",
        absent=(OUT,),
    ),
    "predict --device cuda:99": Case(
        f"predict --model {{run}} --input {{ds}}/images --out {OUT} --device {GPU_WORD}",
        2,
        "--device cuda",
        absent=(OUT,),
    ),
    "train --device gpu": Case(
        f"train --preset tiny --data {{ds}} --out {OUT} --device gpu", 2, "is not a device", absent=(OUT,)
    ),
    "report --device gpu": Case("report {run} --device gpu", 2, "is not a device", absent=("{run}/report.md",)),
    "classify train --device cuda:99": Case(
        f"classify train --data {{tmp}}/x --out {OUT} --device {GPU_WORD}", 2, "--device cuda", absent=(OUT,)
    ),
    # item 3: the user's environment: one line, exit 2
    "predict --out under a file": Case(
        "predict --model {run} --input {ds}/images --out {afile}/preds",
        2,
        "is a file, not a folder",
        setup=_file_in_the_way,
        absent=("{afile}/preds",),
    ),
    "predict --out unwritable": Case(
        "predict --model {run} --input {ds}/images --out {ro}/qmed-out/preds",
        2,
        "{ro}",
        setup=_unwritable,
        needs="unwritable",
        absent=("{ro}/qmed-out",),
    ),
    "export --out unwritable": Case(
        "export --model {run} --out {ro}/qmed-out/m.onnx",
        2,
        "{ro}",
        setup=_unwritable,
        needs="unwritable",
        absent=("{ro}/qmed-out",),
    ),
    "train --out unwritable": Case(
        "train --preset tiny --data {ds} --out {ro}/qmed-out/run --quiet",
        2,
        "{ro}",
        setup=_unwritable,
        needs="unwritable",
        absent=("{ro}/qmed-out",),
    ),
    "evaluate --out a folder": Case(
        "evaluate --pred {ds}/masks --truth {ds} --out {adir}",
        2,
        "is a folder; --out names the file to write",
        setup=_folder,
    ),
    "inspect --json a folder": Case(
        "inspect {ds} --json {adir}", 2, "is a folder; --json names the file to write", setup=_folder
    ),
    "classify predict --out a folder": Case(
        "classify predict --model {tmp}/r --input {tmp}/x --out {adir}", 2, "is a folder", setup=_folder
    ),
    "classify train: truncated .npz": Case(
        f"classify train --data {{trunc}} --out {OUT} --epochs 1",
        2,
        "cannot be read as an .npz archive (BadZipFile); the file may be truncated",
        setup=_npzs,
        absent=(OUT,),
    ),
    "classify train: corrupt .npz member": Case(
        f"classify train --data {{corrupt}} --out {OUT} --epochs 1",
        2,
        "may be truncated or corrupt",
        setup=_npzs,
        absent=(OUT,),
    ),
    "classify inspect: truncated .npz": Case(
        "classify inspect {trunc}", 2, "cannot be read as an .npz archive", setup=_npzs
    ),
    # item 7: suspect data: a warning (exit 0), or a refusal
    "inspect: all masks empty": Case("inspect {empty}", 0, "every mask is empty (3 of 3)", setup=_empty_masks),
    "inspect: 0/1/2 class maps": Case(
        "inspect {classmaps}",
        0,
        "3 of 3 masks hold a few values that each cover several separate regions",
        setup=_class_maps,
    ),
    "train: all masks empty, in train.log": Case(
        f"train --preset tiny --data {{empty}} --out {OUT} --quiet --no-report --set train.epochs=1",
        0,
        "every mask is empty",
        setup=_empty_masks,
        file_says=(f"{OUT}/train.log", "every mask is empty (2 of 2)"),
    ),  # the 2 training images
    "classify train: a segmentation folder": Case(
        f"classify train --data {{ds}} --out {OUT}",
        2,
        "holds images/ and masks/: a segmentation dataset",
        absent=(OUT,),
    ),
    "classify inspect: a symlinked folder is no class": Case(
        "classify inspect {cls}", 0, "all: 8 images", setup=_classes, not_said="12 images"
    ),
    "inspect (class folders): a symlinked folder is no class": Case(
        "inspect {cls}",
        0,
        "ignoring 1 symlinked folder(s), which are not classes",
        setup=_classes,
        not_said="12 images",
    ),
    # item 8
    "predict without best.pt says last.pt": Case(
        f"predict --model {{nobest}} --input {{ds}}/images --out {OUT}",
        0,
        "no checkpoints/best.pt; predicting with last.pt",
        setup=_no_best,
        present=(f"{OUT}/img0.png",),
    ),
    "export without best.pt says last.pt": Case(
        "export --model {nobest} --out {tmp}/m.onnx",
        0,
        "no checkpoints/best.pt; exporting last.pt",
        setup=_no_best,
        needs="onnx",
        present=("{tmp}/m.onnx",),
    ),
    "export --out without .onnx": Case(
        "export --model {run} --out {tmp}/model", 2, "--out must end in .onnx", absent=("{tmp}/model",)
    ),
    "evaluate --pred-kind labels on probability maps": Case(
        "evaluate --pred {prob} --truth {ds} --pred-kind labels",
        0,
        "look like probability maps",
        setup=_probability_maps,
    ),
    "predict: names collide": Case(
        f"predict --model {{run}} --input {{inp}} --out {OUT}",
        2,
        "scan_01.png and scan_01.tif share the name",
        setup=_collision,
        absent=(OUT,),
    ),
    "classify inspect FILE.npz:SPLIT lists the splits": Case(
        "classify inspect {good}:test", 2, "has no split 'test'", setup=_npzs
    ),
    "classify train FILE.npz:SPLIT lists the splits": Case(
        f"classify train --data {{good}}:test --out {OUT}", 2, "splits found: train, val", setup=_npzs, absent=(OUT,)
    ),
}


def _fill(text: str, values: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], text)


@pytest.mark.parametrize("name", list(CASES))
def test_case(name, env, tmp_path, caplog):
    case = CASES[name]
    if case.needs == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    values = {**env, "tmp": str(tmp_path)}
    if case.setup is not None:
        values.update(case.setup(tmp_path, env))
    if case.needs == "unwritable" and "ro" not in values:
        pytest.skip("no folder here refuses writes to this user")
    argv = _fill(case.argv, values).split(" ")
    res = runner.invoke(app, argv)
    out = res.output.strip()
    said = out + "\n" + caplog.text
    assert res.exit_code == case.code, f"{name}: exit {res.exit_code}: {out[-2000:]}"
    assert "Traceback" not in out, out
    if case.code == 2:
        assert len(out.splitlines()) == 1, f"{name}: more than one line:\n{out[-3000:]}"
        assert out.startswith("error: "), out
        assert _fill(case.says, values) in out, f"{name}: {out}"
    else:
        assert _fill(case.says, values) in " ".join(said.split()), f"{name}: {said[-3000:]}"
    if case.not_said:
        assert case.not_said not in out, out
    for p in case.absent:
        assert not Path(_fill(p, values)).exists(), f"{name}: {_fill(p, values)} was left behind"
    for p in case.present:
        assert Path(_fill(p, values)).exists(), f"{name}: {_fill(p, values)} is missing"
    if case.file_says:
        path, text = (_fill(s, values) for s in case.file_says)
        assert text in Path(path).read_text(), f"{name}: {path} does not say {text!r}"
    leftovers = [p for p in tmp_path.rglob(".*") if "tmp" in p.name or "stage" in p.name]
    assert not leftovers, leftovers


# --- handle_errors: the user's environment against a bug in qmed -------------------------------


def _one_command(exc: BaseException):
    app1 = typer.Typer()

    @app1.command()
    @handle_errors
    def go():
        raise exc

    return runner.invoke(app1, [])


@pytest.mark.parametrize(
    "exc, line",
    [
        (PermissionError(13, "Permission denied", "/data/out"), "error: /data/out: permission denied"),
        (
            IsADirectoryError(21, "Is a directory", "/tmp/x.tmp", None, "/data/scores"),
            "error: /data/scores: is a folder, where a file was expected",
        ),
        (
            NotADirectoryError(20, "Not a directory", "/data/a.png/out"),
            "error: /data/a.png/out: a part of this path is a file",
        ),
        (
            OSError(28, "No space left on device", "/data/out/m.png"),
            "error: /data/out/m.png: no space left on the device",
        ),
        (
            RuntimeError("Found no NVIDIA driver on your system."),
            "error: the device is not available: Found no NVIDIA driver",
        ),
        (MemoryError(), "error: this machine ran out of memory (RAM)"),
    ],
)
def test_environment_errors_are_one_line(exc, line):
    res = _one_command(exc)
    assert res.exit_code == 2 and res.output.strip().startswith(line) and len(res.output.strip().splitlines()) == 1, (
        res.output
    )


def test_a_bug_shows_its_traceback_and_says_it_is_a_bug():
    res = _one_command(ValueError("an internal surprise"))
    assert res.exit_code == 1
    out = res.output.strip()
    assert "Traceback" in out and "ValueError: an internal surprise" in out
    assert (
        out.splitlines()[-1].startswith("error: this is a bug in qmed (ValueError)")
        and "report it" in out.splitlines()[-1]
    )


def test_missing_file_inside_qmed_is_a_bug():
    import qmed

    res = _one_command(
        FileNotFoundError(2, "No such file or directory", str(Path(qmed.__file__).parent / "configs" / "gone.yaml"))
    )
    assert res.exit_code == 1 and "bug in qmed" in res.output


# --- strict JSON from a whole tiny run ------------------------------------------------------------


def test_every_json_is_strict(env, tmp_path):
    """train (with and without validation), predict, export, evaluate, report, inspect and classify
    train: every JSON file they write parses with a parser that refuses NaN and Infinity."""
    ds = Path(env["ds"])
    empty = make_dataset(tmp_path / "empty", 3, lambda i, m: np.zeros_like(m))  # fingerprint: no foreground intensity
    runs = {"val": tmp_path / "run_val", "noval": tmp_path / "run_noval"}
    for kind, extra in (("val", []), ("noval", ["--set", "data.val_fraction=0"])):
        res = runner.invoke(
            app,
            [
                "train",
                "--preset",
                "tiny",
                "--data",
                str(ds),
                "--out",
                str(runs[kind]),
                "--quiet",
                "--set",
                "train.epochs=1",
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
    commands = [
        ["report", str(runs["noval"]), "--data", str(ds)],
        [
            "predict",
            "--model",
            str(runs["val"]),
            "--input",
            str(ds / "images"),
            "--out",
            str(tmp_path / "preds"),
            "--instances",
        ],
        ["evaluate", "--pred", str(tmp_path / "preds"), "--truth", str(ds), "--out", str(tmp_path / "scores.json")],
        [
            "evaluate",
            "--pred",
            str(tmp_path / "preds" / "instances"),
            "--truth",
            str(ds),
            "--out",
            str(tmp_path / "labels.json"),
        ],
        ["inspect", str(empty), "--json", str(tmp_path / "fingerprint_empty.json")],
    ]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        commands.append(["export", "--model", str(runs["val"]), "--out", str(tmp_path / "model.onnx")])
    except ImportError:
        pass
    for argv in commands:
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, f"{argv}: {res.output}"
    found = sorted(tmp_path.rglob("*.json"))
    names = {p.name for p in found}
    assert {
        "summary.json",
        "fingerprint.json",
        "report_metrics.json",
        "predict.json",
        "scores.json",
        "run.json",
    } <= names, names
    for p in found:
        strict_json(p.read_text())  # raises on NaN / Infinity
    summary = strict_json((runs["noval"] / "summary.json").read_text())
    assert summary["best_val_ema"] is None and "no validation ran" in summary["selection"]
    assert strict_json((runs["val"] / "summary.json").read_text())["best_val_ema"] is not None
    report = strict_json((runs["noval"] / "report_metrics.json").read_text())
    assert (
        report["summary"]["fp_rate_empty"] is None
        and "no scored image has an empty ground truth" in report["summary"]["fp_rate_empty_note"]
    )
    assert "no validation ran during training" in (runs["noval"] / "report.md").read_text()
    assert "selected by" not in (runs["noval"] / "report.md").read_text().split("\n")[2]
    fp = strict_json((tmp_path / "fingerprint_empty.json").read_text())
    assert fp["foreground_intensity"] is None and any("every mask is empty" in w for w in fp["warnings"])


def test_classify_json_is_strict(tmp_path):
    data = npz(tmp_path / "m.npz")
    out = tmp_path / "c"
    res = runner.invoke(
        app,
        [
            "classify",
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--no-pqc",
            "--weights",
            "none",
            "--image-size",
            "16",
            "--batch-size",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    found = sorted(out.rglob("*.json"))
    assert {"summary.json", "config.json", "metrics.json"} <= {p.name for p in found}
    for p in found:
        strict_json(p.read_text())


def test_write_json_turns_nan_and_infinity_into_null(tmp_path):
    from qmed.io.files import write_json

    write_json(
        tmp_path / "a.json",
        {"a": float("nan"), "b": [float("-inf"), np.float32(2.5)], "c": np.array([1.0, np.inf]), "d": Path("x")},
    )
    assert strict_json((tmp_path / "a.json").read_text()) == {"a": None, "b": [None, 2.5], "c": [1.0, None], "d": "x"}


# --- item 10: README's first command installs what .ci/run installs ---------------------------------


def _pinned(text: str) -> set[str]:
    return {
        w
        for w in re.findall(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.]*", text)
        if not w.startswith(("torch==", "torchvision=="))
    }


def test_readme_installs_what_ci_installs():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(python3 -m venv[^\n]*)\n```", readme).group(1)
    ci = "\n".join(
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip().startswith("pip install")
    )
    assert '".[test]"' in first and '".[test]"' in ci
    assert _pinned(first) == _pinned(ci), (_pinned(first), _pinned(ci))
