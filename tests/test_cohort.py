"""Cohorts of slides on Dask (issue 37): a local cluster gives the objects of the in-process path, a
worker killed mid-job changes nothing, a broken slide is reported while the others finish, a re-run
skips finished slides; the input lists and the cohort table by hand.

The slides are small mosaics of synthetic nuclei (qmed.data.mosaic.build_slide, no dataset needed),
512 px with 256 px blocks (4 blocks a slide, plus one blank slide with none). The model is a tiny
untrained U-Net whose output layer is negated and sharpened: untrained, its probability is lower on
dark (nuclear) pixels than on the pale background, so flipped it finds the nuclei, deterministic
and about 1 s a block on one thread. One LocalCluster of 2 worker processes serves every test that
needs one (module scope, closed at the end).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from qmed.errors import QmedInputError
from qmed.segment.cohort import (
    COHORT_CSV,
    COHORT_JSON,
    TABLE_FIELDS,
    all_succeeded,
    list_slides,
    local_cluster,
    predict_cohort,
    restore_malloc_thresholds,
    slide_folders,
    slide_name,
    table_row,
)
from qmed.segment.slide import plan_slide

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(
    sys.modules[__name__]
)  # KillOnce reaches the workers by value: tests/ is no package there

BLOCK = 256
SLIDES = ("a", "b", "blank")


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The nuclei stand-in: a tiny U-Net straight from initialisation, its output layer w, b replaced
    by -10 w, -10 (b - 1.7): the untrained logits sit near 1.4 on nuclei and 2.0 on background, so the
    new ones are about +3 and -3 there."""
    from qmed.config import load_preset
    from qmed.io.checkpoints import save
    from qmed.models.segmenter import build

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    cfg.model.encoder, cfg.model.arch, cfg.model.input_mode, cfg.model.decoder_channels = (
        "tu-mobilenetv3_small_050",
        "unet",
        "none",
        [16] * 5,
    )
    cfg.model.instance_head = "none"
    cfg.predict.object_diameter = 20.0  # recorded, so planning needs no diameter pass
    state = build(cfg.model, pretrained=False).state_dict()
    state["net.segmentation_head.0.weight"] = -10.0 * state["net.segmentation_head.0.weight"]
    state["net.segmentation_head.0.bias"] = -10.0 * (state["net.segmentation_head.0.bias"] - 1.7)
    path = tmp_path_factory.mktemp("model") / "nuclei.pt"
    save(path, {"config": cfg.model_dump(), "model": state})
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    from qmed.data.mosaic import build_slide

    root = tmp_path_factory.mktemp("slides")
    build_slide(root / "a.ome.tif", 512, None, seed=0, blank=0.0)
    build_slide(root / "b.ome.tif", 512, None, seed=1, blank=0.0)
    # glass only: a tiled TIFF, all white (no block holds tissue)
    tifffile.imwrite(root / "blank.ome.tif", np.full((512, 512, 3), 255, np.uint8), tile=(256, 256), photometric="rgb")
    return root


@pytest.fixture(scope="module")
def reference(model, slides, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The cohort in this process (workers=1: no Dask; one torch thread while it runs, as in the workers)."""
    out = tmp_path_factory.mktemp("ref") / "cohort"
    threads = torch.get_num_threads()
    rows = predict_cohort(model, slides, out, workers=1, block=BLOCK, progress=False)
    assert torch.get_num_threads() == threads  # the caller's setting is back
    return out, rows


@pytest.fixture(scope="module")
def client():
    with local_cluster(2, dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def objects(folder: Path) -> str:
    return (folder / "objects.csv").read_text()


def same_outputs(ref: Path, out: Path) -> None:
    for name in SLIDES:
        assert objects(out / name) == objects(ref / name), name
        for image in ("mask.ome.tif", "labels.ome.tif"):
            np.testing.assert_array_equal(
                tifffile.imread(out / name / image, level=0), tifffile.imread(ref / name / image, level=0)
            )


# --------------------------------------------------------------------------------------------
# inputs and the table, by hand


def test_list_slides_folder_list_file_and_one_slide(tmp_path):
    for name in ("b.svs", "a.ndpi", "notes.txt", ".hidden.svs"):
        (tmp_path / name).write_bytes(b"x")
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))  # a strip TIFF: an image, not a slide
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")  # unreadable: kept, so the cohort reports it
    assert [p.name for p in list_slides(tmp_path)] == ["a.ndpi", "b.svs", "broken.tif"]
    lst = tmp_path / "list.txt"
    lst.write_text("# my cohort\n\nb.svs\n  /abs/c.mrxs  \nsub/d.svs\n")
    assert list_slides(lst) == [tmp_path / "b.svs", Path("/abs/c.mrxs"), tmp_path / "sub" / "d.svs"]
    assert list_slides(tmp_path / "a.ndpi") == [tmp_path / "a.ndpi"]
    assert list_slides([tmp_path / "x.svs", "y.svs"]) == [tmp_path / "x.svs", Path("y.svs")]


def test_list_slides_refuses_empty_inputs_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"x")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    for path, problem in [
        (tmp_path / "empty", "folder holds no slides"),
        (tmp_path / "blank.txt", "slide list names no slides"),
        (tmp_path / "nope", "no such slide"),
    ]:
        with pytest.raises(QmedInputError, match=problem) as info:
            list_slides(path)
        assert "\n" not in str(info.value)


def test_slide_folders_names_and_clashes(tmp_path):
    assert (
        slide_name(Path("x/s1.ome.tif")) == "s1"
        and slide_name(Path("x/s1.OME.TIFF")) == "s1"
        and slide_name(Path("a.b.svs")) == "a.b"
    )
    assert slide_folders([Path("x/a.svs"), Path("y/b.ome.tif")], tmp_path) == [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(QmedInputError, match="shares its output folder name 'a' with x/a.svs"):
        slide_folders([Path("x/a.svs"), Path("y/a.ndpi")], tmp_path)


def test_table_row_from_predict_json_by_hand():
    meta = {
        "counts": {"objects": 12, "blocks": 6, "blocks_run": 4},
        "size": [1000, 800],
        "downsample": 2.0,
        "mpp": 0.5,
        "tissue": {"used": True, "tissue_fraction": 0.25},
        "seconds": {
            "plan": 1.0,
            "blocks": {"read": 0.5, "predict": 3.0, "objects": 0.25, "write": 0.25},
            "pyramids": 2.0,
            "tables": 1.0,
        },
    }
    row = table_row("s.svs", "o/s", "done", meta, wall=9.876)
    # tissue: 0.25 of 1000 x 800 working px, each 2 x 2 level-0 px -> 800,000 px of 0.25 um -> 0.05 mm²
    assert row["tissue_px"] == 800_000 and row["tissue_mm2"] == pytest.approx(0.05)
    assert row["objects"] == 12 and row["blocks_run"] == 4 and row["blocks"] == 6
    assert row["compute_s"] == 8.0 and row["wall_s"] == 9.88 and row["status"] == "done" and row["reason"] == ""
    no_tissue = table_row("s.svs", "o/s", "done", {**meta, "tissue": {"used": False}, "mpp": None})
    assert no_tissue["tissue_px"] is None and no_tissue["tissue_mm2"] is None and no_tissue["wall_s"] is None
    failed = table_row("t.svs", "o/t", "failed", reason="t.svs: truncated")
    assert failed["objects"] is None and failed["compute_s"] is None and failed["reason"] == "t.svs: truncated"


# --------------------------------------------------------------------------------------------
# the cohort, in process and on a local cluster


def test_in_process_cohort_writes_one_folder_per_slide_and_the_table(reference):
    out, rows = reference
    assert [r["status"] for r in rows] == ["done"] * 3 and all_succeeded(rows)
    by = {Path(r["slide"]).name: r for r in rows}
    assert by["a.ome.tif"]["objects"] > 20 and by["b.ome.tif"]["objects"] > 20
    assert (
        by["a.ome.tif"]["blocks_run"] == 4
        and by["blank.ome.tif"]["blocks_run"] == 0
        and by["blank.ome.tif"]["objects"] == 0
    )
    for name in SLIDES:
        assert json.loads((out / name / "predict.json").read_text())["complete"] is True
        assert (
            len(objects(out / name).splitlines()) == by[f"{name}.ome.tif"]["objects"] + 1
        )  # header + one line per object
    with open(out / COHORT_CSV, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == TABLE_FIELDS and [t["status"] for t in table] == ["done"] * 3
    doc = json.loads((out / COHORT_JSON).read_text())
    assert doc["slides"] == 3 and doc["done"] == 3 and doc["failed"] == 0


def test_local_cluster_gives_the_objects_of_the_in_process_path(model, slides, reference, client, tmp_path):
    rows = predict_cohort(model, slides, tmp_path / "c", client=client, block=BLOCK, progress=False)
    assert [r["status"] for r in rows] == ["done"] * 3, rows
    assert [r["objects"] for r in rows] == [r["objects"] for r in reference[1]]
    same_outputs(reference[0], tmp_path / "c")
    assert set(client.run(torch.get_num_threads).values()) == {1}  # the plugin, in every worker
    # Dask's MALLOC_TRIM_THRESHOLD_ (2x slower blocks) is not set in a local cluster's workers, nor here
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ and (restore_malloc_thresholds() or sys.platform != "linux")


def test_a_worker_killed_mid_job_changes_nothing(model, slides, reference, client, tmp_path):
    """A worker plugin kills its worker (os._exit, as the OOM killer would) 50 ms after it starts
    its first block; the nanny starts a new one, Dask re-runs the lost tasks, the markers keep the
    done blocks done. A flag file makes it happen exactly once."""
    flag = tmp_path / "killed"
    before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce(str(flag)), name="kill-once")
    try:
        rows = predict_cohort(model, slides, tmp_path / "k", client=client, block=BLOCK, progress=False)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert flag.exists(), "no worker was killed"
    killed = int(flag.read_text())
    assert killed in before and killed not in set(client.run(os.getpid).values())
    assert [r["status"] for r in rows] == ["done"] * 3, rows
    same_outputs(reference[0], tmp_path / "k")
    assert [p for p in (tmp_path / "k").rglob("*") if ".qmed-tmp-" in p.name or ".qmed-stage-" in p.name] == []
    client.wait_for_workers(2, timeout=60)


def test_a_broken_slide_is_reported_and_the_others_finish(model, slides, client, tmp_path):
    """A slide cut short, one with a scribbled tile, a missing one (all three fail at planning) and
    one whose blocks fail on the workers, listed in a .txt file beside a good slide."""
    cut = tmp_path / "cut.ome.tif"
    shutil.copy(slides / "b.ome.tif", cut)
    os.truncate(cut, cut.stat().st_size // 2)
    scribbled = tmp_path / "scribbled.ome.tif"
    shutil.copy(slides / "b.ome.tif", scribbled)
    with tifffile.TiffFile(scribbled) as tif:
        page = tif.series[0].levels[0].keyframe
        k = len(page.dataoffsets) // 2
        offset, count = int(page.dataoffsets[k]), int(page.databytecounts[k])
    with open(scribbled, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(range(256)) * (count // 256) + b"\x00" * (count % 256))
    # planned, then its block store lost (a disk gone mid-run): its blocks fail on the workers, not its plan
    gone = tmp_path / "gone.ome.tif"
    shutil.copy(slides / "b.ome.tif", gone)
    plan_slide(model, gone, tmp_path / "out" / "gone", block=BLOCK)
    shutil.rmtree(tmp_path / "out" / "gone" / "blocks" / "labels.zarr")
    lst = tmp_path / "cohort.txt"
    lst.write_text(f"{slides / 'a.ome.tif'}\ncut.ome.tif\nscribbled.ome.tif\nmissing.svs\ngone.ome.tif\n")
    rows = predict_cohort(model, lst, tmp_path / "out", client=client, block=BLOCK, progress=False)
    status = {Path(r["slide"]).name: (r["status"], r["reason"]) for r in rows}
    assert status["a.ome.tif"] == ("done", "")
    for name in ("cut.ome.tif", "scribbled.ome.tif", "missing.svs"):
        s, reason = status[name]
        assert s == "failed" and name in reason and "\n" not in reason, (name, reason)
    assert "truncated" in status["cut.ome.tif"][1] and "does not exist" in status["missing.svs"][1]
    assert status["gone.ome.tif"][0] == "failed" and "\n" not in status["gone.ome.tif"][1]
    assert not all_succeeded(rows)
    with open(tmp_path / "out" / COHORT_CSV, newline="") as fh:
        assert [t["status"] for t in csv.DictReader(fh)] == ["done", "failed", "failed", "failed", "failed"]
    doc = json.loads((tmp_path / "out" / COHORT_JSON).read_text())
    assert doc["done"] == 1 and doc["failed"] == 4
    assert (
        "traceback" in doc["rows"][4] and "traceback" not in doc["rows"][1]
    )  # a bug's traceback is kept; bad input needs none


def test_a_rerun_skips_finished_slides(model, slides, reference, client):
    out, _ = reference
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    rows = predict_cohort(model, slides, out, client=client, block=BLOCK, progress=False)
    assert [(r["status"], r["reason"]) for r in rows] == [("skipped", "finished earlier")] * 3
    assert [r["objects"] for r in rows] == [r["objects"] for r in reference[1]] and all_succeeded(rows)
    assert {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out
    } == stamps  # nothing rewritten
    # one slide, in process: skipped too; another block size is another job, refused without --force
    rows = predict_cohort(model, slides / "a.ome.tif", out / "a", workers=1, block=BLOCK, progress=False)
    assert rows[0]["status"] == "skipped"
    with pytest.raises(QmedInputError, match="--force"):  # one slide's error is the run's, not a table row
        predict_cohort(model, slides / "a.ome.tif", out / "a", workers=1, block=2 * BLOCK, progress=False)


def test_one_slide_writes_into_out_itself_on_a_cluster_or_here(model, slides, reference, client, tmp_path, monkeypatch):
    rows = predict_cohort(model, slides / "a.ome.tif", tmp_path / "one", client=client, block=BLOCK, progress=False)
    assert rows[0]["status"] == "done" and objects(tmp_path / "one") == objects(reference[0] / "a")
    assert (
        not (tmp_path / COHORT_CSV).exists() and not (tmp_path / "one" / COHORT_CSV).exists()
    )  # no table for one slide
    meta = json.loads((tmp_path / "one" / "predict.json").read_text())
    assert meta["seconds"]["blocks_this_run"] == 4 and meta["seconds"]["wall_this_run"] > 0
    # without --workers, a slide of less than LOCAL_CLUSTER_MIN_PX of pending cores runs here: no cluster is started
    import qmed.segment.cohort as cohort

    monkeypatch.setattr(
        cohort, "local_cluster", lambda *a, **k: pytest.fail("a local cluster was started for 4 small blocks")
    )
    monkeypatch.setattr(cohort, "default_workers", lambda: 2)
    rows = predict_cohort(model, slides / "b.ome.tif", tmp_path / "here", block=BLOCK, progress=False)
    assert rows[0]["status"] == "done" and objects(tmp_path / "here") == objects(
        reference[0] / "b"
    )  # one torch thread here too


def test_worker_index_from_worker_names():
    from qmed.segment.cohort import worker_index

    assert worker_index(3) == 3 and worker_index("SLURMCluster-0-5") == 5 and worker_index("gpu-node-12") == 12
    assert worker_index(None) is None and worker_index("tcp://10.0.0.1:4000") is None and worker_index("alpha") is None


def test_work_px_counts_core_pixels_by_hand():
    from qmed.segment.cohort import work_px
    from qmed.segment.slide import SlideJob

    job = SlideJob(
        model_path="m",
        backend="torch",
        device=None,
        slide_path="s",
        out="o",
        key="k",
        level=0,
        downsample=1.0,
        mpp=None,
        width=600,
        height=300,
        block=256,
        halo=32,
        chunk=256,
        scale=1.0,
        tta=1,
        threshold=0.5,
        tile=128,
        overlap=0.25,
        batch_size=2,
        instances=True,
        probability=False,
        gzip=False,
        blocks=tuple(range(6)),
    )
    # a 3 x 2 grid of 256 px cores: 256 + 256 + 88 wide, 256 + 44 high
    assert work_px(job, [0]) == 256 * 256 and work_px(job, [2]) == 88 * 256 and work_px(job, [5]) == 88 * 44
    assert work_px(job, range(6)) == 600 * 300 and work_px(job, []) == 0


class KillOnce(distributed.WorkerPlugin):
    """Kill this worker's process 50 ms after it starts executing a block task, once per flag file."""

    def __init__(self, flag: str):
        self.flag = flag

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("qmed-block"):
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        threading.Timer(0.05, os._exit, [1]).start()


def test_cli_cohort_exit_codes_and_table(model, slides, reference, tmp_path):
    """`qmed predict --input LIST.txt`: exit 1 with the table written when a slide failed, 0 when all
    are done (the finished one skipped on the re-run); --workers on images is refused in one line (exit 2)."""
    from typer.testing import CliRunner

    from qmed.cli.app import app

    lst = tmp_path / "list.txt"
    lst.write_text(f"{slides / 'a.ome.tif'}\nmissing.svs\n")
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        str(model),
        "--input",
        str(lst),
        "--out",
        str(out),
        "--block",
        str(BLOCK),
        "--workers",
        "1",
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert (
        "2 slides: 1 done, 0 finished earlier (skipped), 1 failed" in res.output
        and "missing.svs: slide file does not exist" in res.output
    )
    assert [r["status"] for r in json.loads((out / COHORT_JSON).read_text())["rows"]] == ["done", "failed"]
    assert (out / "a" / "predict.json").is_file() and (out / COHORT_CSV).is_file()
    lst.write_text(f"{slides / 'a.ome.tif'}\n")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "1 slide: 0 done, 1 finished earlier (skipped), 0 failed" in res.output, res.output
    (tmp_path / "images").mkdir()
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(model),
            "--input",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "p"),
            "--workers",
            "2",
        ],
    )
    assert res.exit_code == 2 and "--scheduler and --workers are for slides" in res.output
    res = CliRunner().invoke(app, [*args[:-3], "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output
