#!/usr/bin/env bash
# The carry kit for benchmarks/gpu_check.sh (issue 40). The lent GPU machine reaches no package
# index, and ../shared does not travel with the checkout; this script puts into the ignored folder
# .gpu_kit/ what the check needs there:
#   .gpu_kit/wheels/  the wheels of qmed's import dependencies that the GPU image lacks (by
#                     the device tool's KINDS.md package list: segmentation-models-pytorch,
#                     albumentations with albucore, stringzilla and simsimd, pydantic with
#                     pydantic-core, annotated-types and typing-inspection; typing-extensions because
#                     pydantic 2.14 needs >= 4.16), one version each, --no-deps, for CPython
#                     $PYVER on manylinux x86-64;
#   .gpu_kit/data/dsb2018-fluo/  a subset of ../shared/data/dsb2018-fluo (CC0): --train images for
#                     the 50 optimizer steps of 512² crops (400 crops, sampled from them), --val
#                     images for validation and the 512² timing image (the larger ones first);
# then prints the kit's size with the working tree that travels (at most 64 MiB together), the
# device call's `carry` list and its one command.
#
#   bash benchmarks/gpu_kit.sh                  # for the GPU machine's Python 3.12
#   bash benchmarks/gpu_kit.sh --python 3.11    # for a dry run on this machine's Python 3.11
#   options: --python X.Y (3.12), --train N (64), --val N (20), --data DIR (../shared/data/dsb2018-fluo)
#
# Not carried: imagecodecs (qmed's pyproject lists it, but nothing imports it: tifffile reaches for
# it only for compressed TIFFs, and the kit's data are PNG) and qmed itself (gpu_check.sh takes it
# from src/ on PYTHONPATH). Needs pip with the package index, and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."

PYVER=3.12 NTRAIN=64 NVAL=20 SRC=../shared/data/dsb2018-fluo
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYVER="$2"; shift 2 ;;
        --train) NTRAIN="$2"; shift 2 ;;
        --val) NVAL="$2"; shift 2 ;;
        --data) SRC="$2"; shift 2 ;;
        *) echo "gpu_kit: unknown option $1 (options: --python X.Y, --train N, --val N, --data DIR)" >&2; exit 2 ;;
    esac
done
case "$PYVER" in 3.[0-9]|3.[0-9][0-9]) ;; *) echo "gpu_kit: --python takes X.Y (e.g. 3.12), not $PYVER" >&2; exit 2 ;; esac
for sp in train val; do
    if [ ! -d "$SRC/$sp/images" ] || [ ! -d "$SRC/$sp/masks" ]; then
        echo "gpu_kit: $SRC: no $sp/images and $sp/masks (the dsb2018-fluo layout of ../shared/data)" >&2; exit 2
    fi
done

# The versions the project's own .venv runs (segmentation-models-pytorch 0.6, albumentations 2.0.8).
WHEELS=(
    segmentation-models-pytorch==0.6.0
    albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2 simsimd==6.5.16
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0
)
KIT=.gpu_kit
mkdir -p "$KIT/wheels"
rm -f "$KIT"/wheels/*.whl  # one version of each: a wheel of another Python left here would stop the install
echo "gpu_kit: downloading ${#WHEELS[@]} wheels for CPython $PYVER, manylinux x86-64" >&2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$KIT/wheels" "${WHEELS[@]}"
n=$(ls "$KIT"/wheels/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
    echo "gpu_kit: $KIT/wheels holds $n wheels, expected ${#WHEELS[@]}" >&2; exit 1
fi

# The data subset. Deterministic: evenly spaced over the sorted names (train); for val the images
# of 512 px or more on their short side first (the timing image is one of them), then evenly
# spaced small ones. Sizes are read from the PNG header (standard library only).
rm -rf "$KIT/data.partial"
python3 - "$SRC" "$KIT/data.partial/dsb2018-fluo" "$NTRAIN" "$NVAL" <<'EOF'
import shutil, struct, sys
from pathlib import Path

src, dst, ntrain, nval = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def short_side(p: Path) -> int:
    head = p.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"gpu_kit: {p}: not a PNG file")
    w, h = struct.unpack(">II", head[16:24])
    return min(w, h)


def spaced(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


for split, n in (("train", ntrain), ("val", nval)):
    names = sorted(p.name for p in (src / split / "images").glob("*.png"))
    missing = [x for x in names if not (src / split / "masks" / x).is_file()]
    if missing:
        raise SystemExit(f"gpu_kit: {src / split / 'masks' / missing[0]}: no mask for this image")
    if split == "val":
        big = [x for x in names if short_side(src / split / "images" / x) >= 512]
        pick = big[: max(1, n // 4)]
        pick += spaced([x for x in names if x not in pick], n - len(pick))
    else:
        pick = spaced(names, n)
    for sub in ("images", "masks"):
        (dst / split / sub).mkdir(parents=True, exist_ok=True)
        for x in pick:
            shutil.copyfile(src / split / sub / x, dst / split / sub / x)
    big = sum(short_side(dst / split / "images" / x) >= 512 for x in pick)
    print(f"gpu_kit: {split}: {len(pick)} of {len(names)} images ({big} of 512 px or more on the short side)", file=sys.stderr)
EOF
rm -rf "$KIT/data"
mv "$KIT/data.partial" "$KIT/data"
{
    echo "qmed GPU carry kit, made $(date -u +%Y-%m-%dT%H:%MZ) by benchmarks/gpu_kit.sh for CPython $PYVER"
    echo "data: $NTRAIN train / $NVAL val images of $SRC (Data Science Bowl 2018, BBBC038, CC0)"
    echo "wheels:"; (cd "$KIT/wheels" && ls -1 *.whl | sed 's/^/  /')
} >"$KIT/MANIFEST.txt"

# What travels: tracked and untracked-not-ignored files, plus the carried kit.
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb "$KIT/wheels" | cut -f1)
data=$(du -sb "$KIT/data" | cut -f1)
kit=$(du -sb "$KIT" | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "gpu_kit: kit $(mib "$kit") (wheels $(mib "$wheels"), data $(mib "$data")); working tree $(mib "$tree"); together $(mib $((kit + tree))) of the 64 MiB that may travel"
if [ $((kit + tree)) -ge $((64 * 1048576)) ]; then
    echo "gpu_kit: over 64 MiB: take fewer images (--train, --val)" >&2; exit 1
fi
echo "gpu_kit: carry: [\".gpu_kit\"]"
echo "gpu_kit: command (device run, timeout_s 400; the check stops itself after QMED_GPU_BUDGET + 20 s):"
echo "  set -o pipefail; QMED_GPU_BUDGET=330 PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh 2>&1 | tee \$OUT/gpu_check.log"
