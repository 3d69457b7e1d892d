"""Noise robustness of two groups of runs, paired by seed: test mAP50 against Rician SNR.

Each run directory holds the ``test.json`` that ``meddet eval --json ... --noise-sweep
rician:40,20,10,5`` writes. The two groups are paired in the order given (first with first:
give them in seed order), and the table gives, per noise level, mean ± sample sd over seeds for
each group and for the paired difference; the last column is the drop from clean to the lowest
SNR.

    python examples/reproduce/compare_noise.py --a "with nmODE²" RUN_A0 RUN_A1 RUN_A2 \\
        --b "without" RUN_B0 RUN_B1 RUN_B2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def sweep(run: Path) -> dict[str, float]:
    """``{"clean": mAP50, "rician:40": mAP50, ...}`` in % from a run's ``test.json``."""
    t = json.loads((run / "test.json").read_text())
    t = t.get("metrics", t)
    # the sweep's clean entry is named "clean" (or None in older files) and repeats mAP50
    return {"clean": 100.0 * t["mAP50"],
            **{(e["noise"] or "clean"): 100.0 * e["mAP50"] for e in t.get("noise_sweep", [])}}


def ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(name_a: str, runs_a: list[Path], name_b: str, runs_b: list[Path]) -> str:
    if len(runs_a) != len(runs_b):
        raise SystemExit("error: --a and --b need the same number of runs (paired by seed)")
    sa, sb = [sweep(r) for r in runs_a], [sweep(r) for r in runs_b]
    levels = [k for k in sa[0] if all(k in s for s in sa + sb)]
    low = levels[-1]
    head = "| group | " + " | ".join(levels) + f" | drop clean → {low} |"
    lines = [head, "|---|" + "---:|" * (len(levels) + 1)]
    for name, ss in ((name_a, sa), (name_b, sb)):
        cells = [ms([s[k] for s in ss]) for k in levels]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {ms([s['clean'] - s[low] for s in ss])} |")
    diff = [ms([a[k] - b[k] for a, b in zip(sa, sb)]) for k in levels]
    drop = ms([(a["clean"] - a[low]) - (b["clean"] - b[low]) for a, b in zip(sa, sb)])
    lines.append(f"| {name_a} − {name_b}, paired | " + " | ".join(diff) + f" | {drop} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="+", required=True, metavar=("NAME", "RUN"))
    ap.add_argument("--b", nargs="+", required=True, metavar=("NAME", "RUN"))
    a = ap.parse_args(argv)
    print(table(a.a[0], [Path(p) for p in a.a[1:]], a.b[0], [Path(p) for p in a.b[1:]]))


if __name__ == "__main__":
    main()
