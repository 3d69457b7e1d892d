"""Noise robustness of two groups of runs, paired by seed: test mAP50 against Rician SNR.

Each run directory holds the ``test.json`` that ``meddet eval --json ... --noise-sweep
rician:40,20,10,5`` writes. The groups are paired in the order given (give them in seed order);
the table is :func:`meddet.study.compare_runs`'s.

    python examples/reproduce/compare_noise.py --a "with nmODE²" RUN_A0 RUN_A1 RUN_A2 \\
        --b "without" RUN_B0 RUN_B1 RUN_B2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meddet.study import compare_runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="+", required=True, metavar=("NAME", "RUN"))
    ap.add_argument("--b", nargs="+", required=True, metavar=("NAME", "RUN"))
    a = ap.parse_args(argv)
    print(compare_runs(a.a[0], [Path(p) for p in a.a[1:]], a.b[0], [Path(p) for p in a.b[1:]]))


if __name__ == "__main__":
    main()
