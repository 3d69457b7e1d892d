"""Noise robustness: test mAP and mAP50 against Rician SNR, from the ``noise_sweep`` of
evaluations.

The report's two noise sections (one seed per row of :data:`NOISE_ROWS`; mean ± sd over seeds
for the ``alone`` table; each row's mAP, the headline, then its mAP50) and their plots (mAP),
and :func:`compare_runs`, the paired table of two groups of run directories that ``meddet eval
--noise-sweep`` evaluated (mAP50).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from meddet._io import atomic_save
from meddet.errors import MedDetError
from meddet.study.tables import NOISE_PAIRS, NOISE_ROWS, PLACEMENTS, where
from meddet.study.verdicts import (
    BESIDE,
    HEADLINE,
    drops,
    fmt,
    level_stats,
    noise_beside,
    noise_levels,
    stats,
)

Write = Callable[[str], None]  # appends one line (or paragraph) to the report


def _head(w: Write, title: str, first: str, have: list[dict]) -> list[str]:
    """The section title and the table header over the levels ``have`` swept ([]: not run)."""
    w(f"## {title}\n")
    if not have:
        w("not run\n")
        return []
    levels = list(dict.fromkeys(n for r in have for n, _ in noise_levels(r)))
    w(f"| {first} | test | " + " | ".join(levels) + " | drop clean → lowest SNR |")
    w("|---|---|" + "---:|" * (len(levels) + 1))
    return levels


def _one(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def noise_rows(rows: dict[str, dict]) -> list[dict]:
    """The rows of :data:`NOISE_ROWS` that have a noise sweep, in that order."""
    return [rows[i] for i in NOISE_ROWS
            if i in rows and rows[i].get("test", {}).get("noise_sweep")]


def alone_noise(rows: dict[str, dict]) -> list[tuple[str, list[dict]]]:
    """(placement, its rows with a noise sweep) for the ``alone`` table, placements that ran."""
    have = [(q, [r for r in rows.values() if r["group"] == f"alone-lite-{q}"
                 and r.get("test", {}).get("noise_sweep")]) for q in PLACEMENTS]
    return [(q, rs) for q, rs in have if rs]


def write_noise_table(rows: dict[str, dict], w: Write) -> None:
    """The report section of the one-seed noise rows, with the claim's verdict."""
    have = noise_rows(rows)
    levels = _head(w, f"Noise robustness: test {HEADLINE} and {BESIDE} against Rician SNR",
                   "model", have)
    if not levels:
        return
    for r in have:
        for key in (HEADLINE, BESIDE):
            got = dict(noise_levels(r, key))
            vals = [got.get(n) for n in levels]
            drop = (vals[0] - vals[-1] if vals[0] is not None and vals[-1] is not None
                    else None)
            name = f"{r['label']} (`{r['id']}`)" if key == HEADLINE else ""
            w(f"| {name} | {key} | " + " | ".join(_one(v) for v in vals) + f" | {_one(drop)} |")
    w(f"\nOne seed per row; the noise is drawn reproducibly per image (`meddet eval "
      f"--noise-sweep`). Plot ({HEADLINE}): `img/results_noise.png` beside this report. nmODE²'s robustness "
      "claim holds here only if the rows with nmODE² lose clearly less than their twins "
      "without it, every seed swept: "
      + "; ".join(f"{label}, `{a}` vs `{b}`: {noise_beside(rows, a, b)}"
                  for label, a, b in NOISE_PAIRS) + ".\n")


def write_noise_alone(rows: dict[str, dict], w: Write) -> None:
    """The report section of the ``alone`` table's noise sweeps, mean ± sd over seeds."""
    have = alone_noise(rows)
    levels = _head(w, "Noise robustness with and without nmODE² (`meddet_lite` trained "
                   "alone, CPU proxy)", "nmODE²", [r for _, rs in have for r in rs])
    if not levels:
        return
    for q, rs in have:
        for key in (HEADLINE, BESIDE):
            cells = [fmt(m) for m in level_stats(rs, levels, key)]
            drop = fmt(stats(list(drops(rows, f"alone-lite-{q}", key).values())))
            name = f"{where(q)} (`alone-lite-{q}`)" if key == HEADLINE else ""
            w(f"| {name} | {key} | " + " | ".join(cells) + f" | {drop} |")
    v = noise_beside(rows, "alone-lite-head", "alone-lite-none")
    w("\nClaim (nmODE² in the head loses less accuracy to noise than no nmODE², difference "
      f"of the mean drops): {v}. The noise is drawn reproducibly per image; plot "
      f"({HEADLINE}): `img/results_noise_alone.png` beside this report.\n")


def plot_noise(rows: dict[str, dict], path: Path) -> None:
    """One line per noise row (one seed each); nothing is written when none was swept."""
    _plot([(r["id"], [(n, v) for n, v in noise_levels(r, HEADLINE) if v is not None], None)
           for r in noise_rows(rows)],
          "Rician noise at evaluation", f"test {HEADLINE} (%), COCO IoU 0.5:0.95", path)


def plot_noise_alone(rows: dict[str, dict], path: Path) -> None:
    """Mean ± sample sd over seeds of each placement of the ``alone`` table, by noise level."""
    series = []
    for q, rs in alone_noise(rows):
        levels = [n for n, _ in noise_levels(rs[0])]
        ms = level_stats(rs, levels, HEADLINE)
        series.append((f"nmODE² {where(q)} (n={ms[0][2]})",
                       [(n, m) for n, (m, _, _) in zip(levels, ms)], [sd for _, sd, _ in ms]))
    _plot(series, "meddet_lite trained alone: Rician noise at evaluation",
          f"test {HEADLINE} (%), mean ± sd over seeds", path)


def plot_curves(rows: dict[str, dict], path: Path) -> bool:
    """Every row's validation learning curve (``val_curve`` of its ``row.json``): one panel per
    group, one line per seed, val mAP50 (%) by iteration. Nothing is written (``False``) when
    no row has a curve."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows.values(), key=lambda r: (r["group"], r.get("seed", 0))):
        if r.get("val_curve"):
            groups.setdefault(r["group"], []).append(r)
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False,
                             sharey=True)
    try:
        for ax, (group, rs) in zip(axes.flat, groups.items()):
            for r in rs:
                its, m50 = zip(*[(p[0], 100.0 * p[1]) for p in r["val_curve"]])
                ax.plot(its, m50, marker=".", label=f"seed {r.get('seed', 0)}")
            ax.set_title(group, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("val mAP50 (%)", fontsize=8)
        for ax in axes[-1, :]:
            ax.set_xlabel("iteration", fontsize=8)
        fig.tight_layout()
        atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    finally:
        plt.close(fig)
    return True


def _plot(series: list[tuple[str, list[tuple[str, float]], list[float] | None]], title: str,
          ylabel: str, path: Path) -> None:
    """``series``: (label, [(noise level, value)], error bars or None); nothing if empty."""
    if not series:
        return
    # Agg: the report is rebuilt on headless machines.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for label, lv, err in series:
            ax.errorbar(range(len(lv)), [v for _, v in lv], yerr=err, marker="o", capsize=3,
                        label=label)
            ax.set_xticks(range(len(lv)), [n.replace("rician:", "SNR ") for n, _ in lv])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# two groups of evaluated runs, paired by seed


def run_sweep(run: Path) -> dict[str, float]:
    """``{"clean": mAP50, "rician:40": mAP50, ...}`` in % from a run's ``test.json``."""
    path = Path(run) / "test.json"
    if not path.is_file():
        raise MedDetError(f"{path} not found; evaluate the run first with `meddet eval ... "
                          f"--json {path} --noise-sweep rician:40,20,10,5`")
    t = json.loads(path.read_text())
    t = t.get("metrics", t)
    # the sweep's clean entry is named "clean" (or None in older files) and repeats mAP50
    return {"clean": 100.0 * t["mAP50"],
            **{(e["noise"] or "clean"): 100.0 * e["mAP50"] for e in t.get("noise_sweep", [])}}


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def compare_runs(name_a: str, runs_a: list[Path], name_b: str, runs_b: list[Path]) -> str:
    """A Markdown table of two groups' test mAP50 (%) at each noise level, paired by seed.

    The groups are paired in the order given (first with first: give them in seed order).
    Each cell is mean ± sample sd over the runs (the value alone for one run); the last row is
    the paired difference ``a − b``, the last column the drop from clean to the lowest SNR.

    Args:
        name_a, name_b: the groups' names in the table.
        runs_a, runs_b: run directories, each with the ``test.json`` that ``meddet eval
            --json ... --noise-sweep ...`` writes; as many in ``runs_b`` as in ``runs_a``.

    Returns:
        the table, one line per row, without a trailing newline.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise MedDetError(f"{name_a} has {len(runs_a)} runs and {name_b} {len(runs_b)}: give "
                          "both groups the same number of runs (paired by seed), at least one")
    sa, sb = [run_sweep(r) for r in runs_a], [run_sweep(r) for r in runs_b]
    levels = [k for k in sa[0] if all(k in s for s in sa + sb)]
    low = levels[-1]
    head = "| group | " + " | ".join(levels) + f" | drop clean → {low} |"
    lines = [head, "|---|" + "---:|" * (len(levels) + 1)]
    for name, ss in ((name_a, sa), (name_b, sb)):
        cells = [_ms([s[k] for s in ss]) for k in levels]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {_ms([s['clean'] - s[low] for s in ss])} |")
    diff = [_ms([a[k] - b[k] for a, b in zip(sa, sb)]) for k in levels]
    drop = _ms([(a["clean"] - a[low]) - (b["clean"] - b[low]) for a, b in zip(sa, sb)])
    lines.append(f"| {name_a} − {name_b}, paired | " + " | ".join(diff) + f" | {drop} |")
    return "\n".join(lines)
