import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the real datasets (the shared_data fixture, directly or through
    another fixture, or a module's REAL_* path) `shared_data`: `pytest -m "not shared_data"` runs what a
    clone without ../shared can run, and `-m shared_data` lists what it cannot."""
    for item in items:
        uses_real = "shared_data" in getattr(item, "fixturenames", ())
        uses_real |= any(
            m.name == "skipif" and "real data" in str(m.kwargs.get("reason", "")) for m in item.iter_markers()
        )
        if uses_real:
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data beside the clone)")
    return SHARED_DATA


def copy_subset(src: Path, root: Path, size: tuple[int, int], counts: dict[str, int]) -> dict:
    """The first counts[split] images of SRC/split whose size (W, H) is `size`, with their masks, copied
    into ROOT/split: {split: folder}."""
    import shutil

    from PIL import Image

    out = {}
    for split, n in counts.items():
        names = sorted(p.name for p in (src / split / "images").iterdir())
        picked = [nm for nm in names if Image.open(src / split / "images" / nm).size == size][:n]
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
            for nm in picked:
                shutil.copy(src / split / sub / nm, root / split / sub / nm)
        out[split] = root / split
    return out


@pytest.fixture(scope="session")
def fluo_subset(shared_data, tmp_path_factory) -> dict:
    """A few real DSB2018 fluorescence images (small ones) as train/val folders, copied once."""
    return copy_subset(
        shared_data / "dsb2018-fluo", tmp_path_factory.mktemp("fluo"), (256, 256), {"train": 6, "val": 3}
    )


@pytest.fixture(scope="session")
def histo_subset(shared_data, tmp_path_factory) -> dict:
    """A few real DSB2018 H&E tissue images (the 320x256 ones) as train/val folders, copied once."""
    return copy_subset(
        shared_data / "dsb2018-histo", tmp_path_factory.mktemp("histo"), (320, 256), {"train": 4, "val": 2}
    )
