"""What Dask's MALLOC_TRIM_THRESHOLD_ does to a block, in plain processes (no Dask): the same blocks
with glibc's defaults, with the variable Dask's nannies set, and with it plus qmed's mallopt fix.

Usage: python benchmarks/malloc_trim.py --model MODEL --slide SLIDE [--block 256] [--rounds 3]

Each round runs one child process per setting, one after another: the child plans the slide into a
fresh temporary folder, loads the model, then times run_block over every block with one torch thread
(qmed.segment.cohort.restore_malloc_thresholds first, in the third setting). Prints the seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = """
import sys, time, torch
if sys.argv[3] == "fixed":
    from qmed.segment.cohort import restore_malloc_thresholds
    assert restore_malloc_thresholds()
torch.set_num_threads(1)
from qmed.segment.slide import load_predictor, plan_slide, run_block
job = plan_slide(sys.argv[1], sys.argv[2], sys.argv[4], block=int(sys.argv[5]))
load_predictor(job)
t = time.perf_counter()
for i in job.blocks:
    run_block(job, i)
print(round(time.perf_counter() - t, 2))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--slide", required=True)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    plain = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    settings = [
        ("glibc defaults", "plain", plain),
        ("MALLOC_TRIM_THRESHOLD_=65536", "trim", {**plain, "MALLOC_TRIM_THRESHOLD_": "65536"}),
        ("the same + qmed's mallopt", "fixed", {**plain, "MALLOC_TRIM_THRESHOLD_": "65536"}),
    ]
    print("round | " + " | ".join(name for name, _, _ in settings))
    for r in range(args.rounds):
        secs = []
        for _, mode, env in settings:
            with tempfile.TemporaryDirectory() as tmp:
                res = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        args.model,
                        args.slide,
                        mode,
                        os.path.join(tmp, "o"),
                        str(args.block),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            secs.append(res.stdout.strip().splitlines()[-1] + " s")
        print(f"{r} | " + " | ".join(secs), flush=True)


if __name__ == "__main__":
    main()
