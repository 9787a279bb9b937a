"""Issue 20's peer row: Cellpose 3 trained from scratch on qmed's training split at a CPU budget.

Cellpose's pretrained weights cannot be downloaded here, so the network (CPnet, the Cellpose 2/3
U-Net with style vectors, random initialisation) is trained with Cellpose's own API,
`cellpose.train.train_seg` (AdamW 0.005, its warm-up and its flow + cell-probability loss), on
the instance label maps of TRAIN. The flow targets are computed first, outside the budget (qmed's
own data loading is outside its budget too). A short timed run of 16 images then fits the epochs
to MINUTES: n_epochs = max(10, images that fit / the set), and images per epoch to match (at
least 8: Cellpose's 10 warm-up epochs of 8 images, about 3 minutes here, are the floor, so a
smaller budget overruns; train_seconds in OUT/cellpose.json says what it took). The
model then segments VAL's images (Cellpose's flow dynamics, its default thresholds, the training
objects' mean diameter) into 16-bit label maps OUT/preds/NAME.png, for `qmed evaluate --pred
OUT/preds --pred-kind labels --truth VAL`.

Cellpose 3.1.1.2 pins numpy < 2.1 and needs numba, and qmed's environment has numpy 2.4, so this
runs in an environment of its own:

    python3.11 -m venv cpenv && cpenv/bin/pip install torch==2.14.1 "numpy<2.1" cellpose==3.1.1.2
    OMP_NUM_THREADS=1 taskset -c 0 cpenv/bin/python benchmarks/cellpose_peer.py TRAIN VAL OUT MINUTES

(Cellpose 4 is Cellpose-SAM, a ViT-L encoder meant to be fine-tuned from its pretrained weights,
not trained from scratch on one CPU core.)
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def read_pairs(folder: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    names, images, labels = [], [], []
    masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for p in sorted((folder / "images").iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
        lab = np.asarray(Image.open(masks[p.stem]))
        lab = lab[..., 0] if lab.ndim == 3 else lab
        if len(np.unique(lab)) <= 2:  # a binary mask: its 8-connected components are the objects
            lab, _ = ndimage.label(lab > 0, structure=np.ones((3, 3)))
        names.append(p.stem)
        images.append(img.mean(axis=2))  # one channel, as Cellpose's channels=[0, 0] (gray) takes H&E too
        labels.append(lab.astype(np.int32))
    return names, images, labels


def main() -> None:
    train_dir, val_dir, out, minutes = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    torch.set_num_threads(1)
    from cellpose import dynamics, models, train

    out.mkdir(parents=True, exist_ok=True)
    _, images, labels = read_pairs(train_dir)
    t0 = time.time()
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    t_flows = time.time() - t0
    kw = dict(
        train_data=images,
        train_labels=flows,
        channels=[0, 0],
        normalize=True,
        min_train_masks=1,
        batch_size=8,
        save_path=str(out),
        save_every=10**6,
    )

    def fresh():
        torch.manual_seed(0)
        return models.CellposeModel(gpu=False, pretrained_model=None, model_type=None, diam_mean=17.0)

    t0 = time.time()
    train.train_seg(fresh().net, n_epochs=1, nimg_per_epoch=16, model_name="calibration", **kw)
    t_img = (time.time() - t0) / 16
    total = int(minutes * 60 / t_img)
    n_epochs = int(max(10, min(500, total // len(images))))
    per_epoch = max(8, total // n_epochs)
    model = fresh()
    t0 = time.time()
    path, _, _ = train.train_seg(
        model.net, n_epochs=n_epochs, nimg_per_epoch=per_epoch, model_name="cellpose_qmed", **kw
    )
    t_train = time.time() - t0
    trained = models.CellposeModel(gpu=False, pretrained_model=str(path))
    diameter = float(trained.net.diam_labels.item())
    (out / "preds").mkdir(exist_ok=True)
    names, val_images, _ = read_pairs(val_dir)
    t0 = time.time()
    for name, img in zip(names, val_images):
        masks = trained.eval(img, channels=[0, 0], diameter=diameter)[0]
        Image.fromarray(masks.astype(np.uint16)).save(out / "preds" / f"{name}.png")
    from importlib.metadata import version

    doc = {
        "cellpose": version("cellpose"),
        "minutes": minutes,
        "flow_seconds": round(t_flows, 1),
        "seconds_per_image": round(t_img, 3),
        "n_epochs": n_epochs,
        "images_per_epoch": per_epoch,
        "train_seconds": round(t_train, 1),
        "predict_seconds": round(time.time() - t0, 1),
        "diameter": diameter,
        "model": str(path),
        "n_val": len(names),
    }
    (out / "cellpose.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
