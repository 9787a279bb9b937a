import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fluo_subset(shared_data, tmp_path_factory) -> dict:
    """A few real DSB2018 fluorescence images (small ones) as train/val folders, copied once."""
    import shutil

    src = shared_data / "dsb2018-fluo"
    root = tmp_path_factory.mktemp("fluo")
    out = {}
    for split, n in (("train", 6), ("val", 3)):
        names = sorted(p.name for p in (src / split / "images").iterdir())
        from PIL import Image

        small = [nm for nm in names if Image.open(src / split / "images" / nm).size == (256, 256)][:n]
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
            for nm in small:
                shutil.copy(src / split / sub / nm, root / split / sub / nm)
        out[split] = root / split
    return out
