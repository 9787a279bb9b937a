"""Dense-CRF post-processing (Krähenbühl & Koltun, 2011): the multi-scale rung of Table II names it.

Needs `pydensecrf` as packaged by `pip install pydensecrf2` (it compiles from source, so it needs a
C++ compiler and Cython). The original `pydensecrf` and `SimpleCRF` fail to build on Python 3.11
here; qmed does not ship a CRF of its own. Without the package `available()` is False and
`qmed ablate` runs that rung without CRF, saying so in its row.

Settings (pydensecrf's README defaults; the paper gives none): unary -log p of the two classes
(p clipped to [1e-5, 1 - 1e-5]); a Gaussian smoothness kernel (sxy 3, compat 3); an appearance
kernel on the image as the model saw it, 8-bit (sxy 50, srgb 13, compat 10); 5 mean-field steps.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from qmed.errors import QmedInputError


def available() -> bool:
    return importlib.util.find_spec("pydensecrf") is not None


def refine(prob: np.ndarray, image: np.ndarray, iterations: int = 5) -> np.ndarray:
    """prob HxW foreground probability, image HxWx3 float in [0, 1] -> HxW refined probability."""
    if not available():
        raise QmedInputError(None, "dense-CRF post-processing needs pydensecrf: pip install pydensecrf2")
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = prob.shape
    p = np.clip(prob.astype(np.float32), 1e-5, 1 - 1e-5)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1 - p, p]))))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    rgb = np.ascontiguousarray((np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8))
    crf.addPairwiseBilateral(sxy=50, srgb=13, rgbim=rgb, compat=10)
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(2, h, w)[1]


def refine_folder(pred_dir: str | Path, image_dir: str | Path, out: str | Path, cfg, threshold: float = 0.5) -> int:
    """CRF on every PRED_DIR/probabilities/NAME.png with its IMAGE_DIR image (scaled as `cfg` feeds the
    model); OUT/NAME.png masks and OUT/probabilities/NAME.png, as `qmed predict` writes them."""
    from qmed.data.batches import model_input
    from qmed.data.dataset import list_images
    from qmed.io.images import read_image, read_probability, write_mask_png, write_probability_png

    pred_dir, out = Path(pred_dir), Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "probabilities").mkdir(parents=True)
    images = {f.stem: f for f in list_images(image_dir)}
    n = 0
    for f in sorted((pred_dir / "probabilities").glob("*.png")):
        if f.stem not in images:
            raise QmedInputError(f, f"no image named {f.stem} in {image_dir}")
        prob = refine(read_probability(f), model_input(read_image(images[f.stem]), cfg))
        write_mask_png(out / f.name, prob > threshold)
        write_probability_png(out / "probabilities" / f.name, prob)
        n += 1
    return n
