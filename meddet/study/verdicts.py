"""Statistics over the study's rows and the verdicts the report states.

Rows are the ``row.json`` dicts of :mod:`meddet.study.records`, keyed by row id. Metrics in
rows are fractions; everything returned here is in percent points. A *group* is the rows that
differ only by seed. A difference between two groups is judged against the seed-to-seed
spread (the larger sample standard deviation of the two): beyond it with the paper's sign it
is *reproduced*, beyond it with the opposite sign *contradicted*, inside it *not resolved*.
"""

from __future__ import annotations

import json
import math
import statistics

Stats = tuple[float, float, int]  # mean, sample standard deviation, count


def stats(values: list[float]) -> Stats:
    """Mean, sample standard deviation (0 for one value) and count; NaN, NaN, 0 for none."""
    if not values:
        return math.nan, math.nan, 0
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd, len(values)


def group_metric(rows: dict[str, dict], group: str, key: str = "mAP50",
                 cls: str | None = None) -> Stats:
    """:func:`stats` of ``100 * test[key]`` (of class ``cls`` when given) over ``group``.

    Rows whose record lacks ``key`` are left out.
    """
    vals = []
    for r in rows.values():
        if r["group"] == group and "test" in r:
            m = r["test"]["per_class"][cls] if cls else r["test"]
            if m.get(key) is not None:
                vals.append(100.0 * m[key])
    return stats(vals)


def group_seconds(rows: dict[str, dict], group: str) -> dict[str, float]:
    """Mean wall-clock seconds of the group's rows, per device they ran on (a GPU row and a
    CPU row of one group differ by an order of magnitude; one mean would describe neither)."""
    by: dict[str, list[float]] = {}
    for r in rows.values():
        if r["group"] == group:
            by.setdefault(r.get("device", "?"), []).append(r["seconds"])
    return {d: statistics.fmean(v) for d, v in sorted(by.items())}


def fmt(ms: Stats) -> str:
    """``82.0 ± 2.0 (n=3)``, ``71.2 (n=1)`` or ``not run``."""
    m, sd, n = ms
    if n == 0:
        return "not run"
    return f"{m:.1f} ± {sd:.1f} (n={n})" if n > 1 else f"{m:.1f} (n=1)"


def verdict(a: Stats, b: Stats, spread: float | None = None) -> str:
    """Does ``a`` beat ``b`` by more than the seed-to-seed spread?

    The spread is the larger sample standard deviation of the two rows (``spread`` when a
    row has one seed, typically the MedDet rows' standard deviation).
    """
    if a[2] == 0 or b[2] == 0:
        return "not run"
    sds = [x[1] for x in (a, b) if x[2] > 1]
    sp = max(sds) if sds else spread
    d = a[0] - b[0]
    if sp is None or math.isnan(sp):
        return f"{d:+.1f}: one seed, spread unknown, not assessable"
    # one row of several seeds against a single run: that run may be a lucky or unlucky seed
    one = "; one row has one seed" if sds and min(a[2], b[2]) == 1 else ""
    if d > sp:
        return f"**reproduced** ({d:+.1f} > spread {sp:.1f}{one})"
    if d < -sp:
        return f"**contradicted** ({d:+.1f}, beyond spread {sp:.1f}{one})"
    return f"not resolved ({d:+.1f}, within spread {sp:.1f}{one})"


def paired(rows: dict[str, dict], a: str, b: str, key: str = "mAP50") -> dict[int, float]:
    """Per seed that both groups ran: ``100 * (a - b)`` of ``key`` on the test split."""
    by = {g: {r["seed"]: 100.0 * r["test"][key] for r in rows.values()
              if r["group"] == g and "test" in r} for g in (a, b)}
    return {s: by[a][s] - by[b][s] for s in sorted(by[a].keys() & by[b].keys())}


def lite_verdict(med: Stats, lite: Stats, diffs: dict[int, float], margin: float = 1.0) -> str:
    """The MedDet-lite bar: at most ``margin`` points below MedDet (same schedule), as a
    paragraph; ``diffs`` are the per-seed differences (:func:`paired`)."""
    d = lite[0] - med[0]
    text = (f"MedDet {fmt(med)} vs MedDet-lite {fmt(lite)} test mAP50: difference of the means "
            f"{d:+.1f} points")
    if diffs:
        text += " (per seed, lite − MedDet: " + ", ".join(
            f"s{s} {v:+.1f}" for s, v in diffs.items()) + ")"
    met = d >= -margin
    text += (f". The bar (MedDet-lite no more than {margin:g} point below MedDet): "
             f"**{'met' if met else 'not met'}** on the means")
    sp = max((x[1] for x in (med, lite) if x[2] > 1), default=math.nan)
    if not math.isnan(sp) and sp > margin:
        text += (f"; the seed-to-seed spread ({sp:.1f} points) is larger than the margin, "
                 f"so these {min(med[2], lite[2])} seeds cannot resolve a difference of "
                 f"{margin:g} point in either direction")
    return text + ".\n"


def noise_levels(r: dict) -> list[tuple[str, float]]:
    """A row's noise sweep as ``[(level, test mAP50 %)]``, clean first (``[]``: not swept)."""
    return [(x["noise"] or "clean", 100 * x["mAP50"]) for x in r["test"].get("noise_sweep", [])]


def level_stats(rs: list[dict], levels: list[str]) -> list[Stats]:
    """Mean, sample sd and count over the runs ``rs`` at each noise level."""
    return [stats([v for r in rs for n_, v in noise_levels(r) if n_ == n]) for n in levels]


def drops(rows: dict[str, dict], group: str) -> dict[int, float]:
    """Per seed of ``group``: test mAP50 (%) clean minus at the sweep's last (noisiest) level."""
    out = {}
    for r in rows.values():
        lv = noise_levels(r) if r["group"] == group and "test" in r else []
        if len(lv) > 1:
            out[r["seed"]] = lv[0][1] - lv[-1][1]
    return out


def noise_verdict(rows: dict[str, dict], with_g: str, without_g: str) -> str:
    """Does ``with_g`` (nmODE²) lose less from clean to the noisiest level than ``without_g``?
    The verdict of the mean drops (without − with), then the paired per-seed differences."""
    with_, without = drops(rows, with_g), drops(rows, without_g)
    if not (with_ and without):
        return "not run"
    per = {s: with_[s] - without[s] for s in sorted(with_.keys() & without.keys())}
    v = verdict(stats(list(without.values())), stats(list(with_.values())))
    return v + ("; per seed, drop with − drop without: "
                + ", ".join(f"s{s} {d:+.1f}" for s, d in per.items()) if per else "")


def taught_apart(rows: dict[str, dict], a: str, b: str) -> bool:
    """Whether two groups' rows were distilled from different sets of teachers."""
    sets = [{json.dumps(r["teachers"], sort_keys=True) for r in rows.values()
             if r.get("group") == g and "teachers" in r} for g in (a, b)]
    return all(sets) and sets[0] != sets[1]
