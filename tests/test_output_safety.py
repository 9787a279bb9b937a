"""Nothing lost (issue 41): --out never overlaps an input, --force replaces only qmed's own outputs,
a killed run's leftovers are removed by the next run and never a live run's, predictions are written
image by image and a re-run continues, and outputs follow the umask."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.errors import QmedInputError
from qmed.io import files
from tests.test_bad_input import make_dataset, model_run  # noqa: F401  (model_run: the tiny run fixture)

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: the byte-for-byte check of the data-loss cases."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_line(res, *needles):
    msg = res.output.strip()
    assert res.exit_code == 2, msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


# The four data-loss cases of the issue, each with --force: every input file survives byte for byte.
def _predict_into_input(tmp, run):
    ds = make_dataset(tmp / "ds")
    return ds, ["predict", "--model", str(run), "--input", str(ds / "images"), "--out", str(ds / "images"), "--force"]


def _predict_into_parent(tmp, run):
    ds = make_dataset(tmp / "ds")
    return ds, ["predict", "--model", str(run), "--input", str(ds / "images"), "--out", str(ds), "--force"]


def _train_into_data(tmp, run):
    ds = make_dataset(tmp / "ds")
    return ds, ["train", "--preset", "tiny", "--data", str(ds), "--out", str(ds), "--force", "--quiet", "--no-report"]


def _convert_into_source(tmp, run):
    ds = make_dataset(tmp / "ds")
    nn = tmp / "nn"
    res = runner.invoke(app, ["convert", "--to", "nnunet", "--data", str(ds), "--out", str(nn)])
    assert res.exit_code == 0, res.output
    src = next(nn.glob("Dataset*"))
    return src, ["convert", "--from", "nnunet", "--data", str(src), "--out", str(src), "--force"]


def _predict_into_run(tmp, run):
    ds = make_dataset(tmp / "ds")
    return run, ["predict", "--model", str(run), "--input", str(ds / "images"), "--out", str(run), "--force"]


@pytest.mark.parametrize(
    "case",
    [_predict_into_input, _predict_into_parent, _train_into_data, _convert_into_source, _predict_into_run],
    ids=[
        "predict-out-is-input",
        "predict-out-holds-input",
        "train-out-is-data",
        "convert-out-is-source",
        "predict-out-is-model-run",
    ],
)
def test_force_never_deletes_inputs(case, tmp_path, model_run):
    guarded, argv = case(tmp_path, model_run)
    before = snapshot(guarded)
    res = runner.invoke(app, argv)
    _one_line(res, "input")
    assert snapshot(guarded) == before  # every input file still there, byte for byte
    assert not [
        p for p in guarded.parent.rglob(".*") if ".qmed-" in p.name and p.name != files.OUTPUT_MARKER
    ]  # no staging left


def test_out_inside_input_and_symlinked_input_refused(tmp_path, model_run):
    ds = make_dataset(tmp_path / "ds")
    link = tmp_path / "link"
    link.symlink_to(ds / "images")
    res = runner.invoke(
        app, ["predict", "--model", str(model_run), "--input", str(link), "--out", str(ds / "images" / "preds")]
    )
    _one_line(res, "lies inside the input")
    assert not (ds / "images" / "preds").exists()


def test_force_refuses_a_folder_qmed_did_not_write(tmp_path, model_run):
    ds = make_dataset(tmp_path / "ds")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_bytes(b"years of work")
    res = runner.invoke(
        app, ["predict", "--model", str(model_run), "--input", str(ds / "images"), "--out", str(mine), "--force"]
    )
    _one_line(res, "not written by qmed")
    assert (mine / "thesis.docx").read_bytes() == b"years of work" and len(list(mine.iterdir())) == 1
    # a file in the way of an output folder is refused too
    f = tmp_path / "file.txt"
    f.write_text("keep")
    res = runner.invoke(
        app, ["predict", "--model", str(model_run), "--input", str(ds / "images"), "--out", str(f), "--force"]
    )
    _one_line(res, "is a file")
    assert f.read_text() == "keep"


def test_force_replaces_qmed_output_and_settings_need_force(tmp_path, model_run):
    ds = make_dataset(tmp_path / "ds")
    out = tmp_path / "p"
    base = ["predict", "--model", str(model_run), "--input", str(ds / "images"), "--out", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    assert files.read_marker(out)["verb"] == "predict"
    # the same command again: everything is done, nothing is redone
    res = runner.invoke(app, base)
    assert res.exit_code == 0 and "4 of 4 images already done" in res.output, res.output
    # other settings: refused without --force, replaced with it
    _one_line(runner.invoke(app, [*base, "--threshold", "0.7"]), "another model or other settings", "--force")
    res = runner.invoke(app, [*base, "--threshold", "0.7", "--force"])
    assert res.exit_code == 0, res.output
    assert '"threshold": 0.7' in (out / "predict.json").read_text()


def test_outputs_follow_umask(tmp_path, model_run):
    ds = make_dataset(tmp_path / "ds")
    old = os.umask(0o022)
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "qmed.cli.app",
                "predict",
                "--model",
                str(model_run),
                "--input",
                str(ds / "images"),
                "--out",
                str(tmp_path / "p"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "qmed.cli.app",
                "convert",
                "--to",
                "nnunet",
                "--data",
                str(ds),
                "--out",
                str(tmp_path / "nn"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
    finally:
        os.umask(old)
    for root in (tmp_path / "p", tmp_path / "nn"):
        for p in [root, *root.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_stale_leftovers_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_tag = f"{dead.pid}-{files._start_time(dead.pid)}"  # the process is gone: its start time reads "0" now
    stale_stage = tmp_path / f".out.qmed-stage-{dead.pid}-12345-abc"
    stale_stage.mkdir()
    (stale_stage / "half.png").write_bytes(b"x")
    live_stage = tmp_path / f".out.qmed-stage-{os.getpid()}-{files._start_time(os.getpid())}-def"
    live_stage.mkdir()
    stale_tmp = tmp_path / f".a.qmed-tmp-{dead.pid}-12345-xyz.tmp.png"
    stale_tmp.write_bytes(b"x")
    user_dot = tmp_path / ".out.notes"
    user_dot.write_text("mine")
    assert dead_tag.endswith("-0") or not dead_tag.endswith("-12345")
    stage = files.staging_dir(out, force=False)
    try:
        assert not stale_stage.exists() and not stale_tmp.exists()
        assert live_stage.exists() and user_dot.read_text() == "mine"
        assert stage.exists() and (stage.stat().st_mode & 0o777) == 0o777 & ~files._UMASK
    finally:
        import shutil

        shutil.rmtree(stage)
        shutil.rmtree(live_stage)


def test_check_not_inputs_cases(tmp_path):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    for out, msg in ((a, "is the input"), (tmp_path, "holds the input"), (a / "b" / "c", "lies inside the input")):
        with pytest.raises(QmedInputError, match=msg):
            files.check_not_inputs(out, [a])
    files.check_not_inputs(tmp_path / "sibling", [a, None, ""])  # beside it: fine
    assert files.input_paths("x/y.npz:train", "z", None) == [Path("x/y.npz"), Path("z")]


def test_kill_predict_then_resume(tmp_path, model_run):
    """SIGKILL mid-folder; the next run leaves nothing stale, writes only the images not yet done,
    and ends with the same masks as an uninterrupted run."""
    src = make_dataset(tmp_path / "ds", n=2)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):  # many small images so the kill lands mid-folder
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(imgs / f"im{i:02d}.png")
    ref = tmp_path / "ref"
    res = runner.invoke(app, ["predict", "--model", str(model_run), "--input", str(imgs), "--out", str(ref), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "qmed.cli.app",
        "predict",
        "--model",
        str(model_run),
        "--input",
        str(imgs),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("im*.png"))) < 5:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("im*.png")}
    assert 5 <= len(done_before) < 40, len(done_before)
    assert not (out / "predict.json").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{len(done_before)} of 40 images already done" in res.stdout, res.stdout
    for name, mtime in done_before.items():  # not rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    leftovers = [p for p in [*out.rglob(".*"), *tmp_path.glob(".*")] if p.name != files.OUTPUT_MARKER]
    assert not leftovers, leftovers
    assert snapshot(out).keys() == snapshot(ref).keys()
    for name in (p.name for p in ref.glob("im*.png")):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(ref / name))), name
    del src
