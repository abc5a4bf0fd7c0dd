"""Mean ± std over (seed, fold) of image-level AUC, accuracy and F1 for DMSL run operands (docs/dmsl-fusion.md).

    PYTHONPATH=src .venv/bin/python benchmarks/dmsl_fusion_table.py RUN [RUN@10x] [RUN_A+RUN_B] ... [--level slide]

Operands as for `histomag dmsl compare`: run folders, multi-seed run folders, one head of a fused run
(RUN@10x) and late fusions (RUN_A+RUN_B).
"""

from __future__ import annotations

import argparse

import numpy as np

from histomag.dmsl.compare import COMPARE_METRICS, operand_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--level", default="slide")
    args = parser.parse_args()
    print(f"| run | pairs | {' | '.join(COMPARE_METRICS)} |")
    print("|---|---|" + "---|" * len(COMPARE_METRICS))
    for spec in args.runs:
        values = operand_metrics(spec, level=args.level)
        cells = [f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}" for v in values.values()]
        print(f"| {spec} | {len(values['auc'])} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
