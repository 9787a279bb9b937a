"""Two `qmed benchmark suite` runs on the same splits, method by method: the paired per-image Dice
difference NEW - OLD of qmed's row (a candidate default against the old one) and of smp's (the
same plain script twice: how far two runs of one method drift apart; the floor under any qmed
difference read this way). Cross-run, so each pair ran beside smp rather than beside each other.

    python benchmarks/suite_compare.py OLD_SUITE_DIR NEW_SUITE_DIR
"""

import json
import sys
from pathlib import Path

from qmed.experiments.suite import method_per_image, paired_difference


def main() -> None:
    old, new = Path(sys.argv[1]), Path(sys.argv[2])
    doc = json.loads((new / "suite.json").read_text())
    print(f"new: preset {doc['settings']['preset']}, qmed --set {doc['settings'].get('qmed_overrides') or '-'}")
    for row in doc["datasets"]:
        name = row["dataset"]
        for method in ("qmed", "smp"):
            d = paired_difference(method_per_image(new, name, method), method_per_image(old, name, method))
            print(
                f"{name:<14} {method:<5} new - old per-image Dice {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                f"n={d['n']} better {d['better']} worse {d['worse']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
