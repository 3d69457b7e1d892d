"""Statistics over the study's rows and the verdicts the report states.

Rows are the ``row.json`` dicts of :mod:`meddet.study.records`, keyed by row id. Metrics in
rows are fractions; everything returned here is in percent points. A *group* is the rows that
differ only by seed. A difference between two groups is judged against the seed-to-seed
spread (the larger sample standard deviation of the two): beyond it with the paper's sign it
is *reproduced*, beyond it with the opposite sign *contradicted*, inside it *not resolved*.
Verdicts are decided on the headline metric, COCO mAP@[.5:.95] (:data:`HEADLINE`); the same
rule on mAP50 (:data:`BESIDE`) is stated beside it.
"""

from __future__ import annotations

import json
import math
import statistics

Stats = tuple[float, float, int]  # mean, sample standard deviation, count

HEADLINE = "mAP"    # COCO mAP@[.5:.95] on the test split: the metric verdicts are decided on
BESIDE = "mAP50"    # shown beside it (the paper's tables and older records report it)


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


def group_cost(rows: dict[str, dict], group: str) -> dict[str, float]:
    """Mean training seconds per training image of the group's rows, per device (rows whose
    records carry ``train_seconds`` and ``train_images``; older records have none)."""
    by: dict[str, list[float]] = {}
    for r in rows.values():
        if r["group"] == group and r.get("train_images"):
            by.setdefault(r.get("device", "?"), []).append(r["train_seconds"] / r["train_images"])
    return {d: statistics.fmean(v) for d, v in sorted(by.items())}


def overhead(rows: dict[str, dict], group: str, base: str) -> dict[str, float]:
    """``group``'s training cost per image divided by ``base``'s, per device both ran on."""
    a, b = group_cost(rows, group), group_cost(rows, base)
    return {d: a[d] / b[d] for d in a if d in b and b[d] > 0}


def fmt(ms: Stats) -> str:
    """``82.0 ± 2.0 (n=3)``, ``71.2 (n=1)`` or ``not run``."""
    m, sd, n = ms
    if n == 0:
        return "not run"
    return f"{m:.1f} ± {sd:.1f} (n={n})" if n > 1 else f"{m:.1f} (n=1)"


def judged_spread(a: Stats, b: Stats, spread: float | None = None) -> float | None:
    """The spread :func:`verdict` judges ``a − b`` by: the larger sample standard deviation
    of the rows with several seeds, else ``spread``; ``None`` when a row is missing or the
    spread is unknown. A difference must exceed it to count: it is the smallest difference
    the comparison resolves."""
    if a[2] == 0 or b[2] == 0:
        return None
    sds = [x[1] for x in (a, b) if x[2] > 1]
    sp = max(sds) if sds else spread
    return None if sp is None or math.isnan(sp) else sp


def resolution(rows: dict[str, dict], pairs: list[tuple[str, str, str]],
               spreads: dict[str, float | None], paper_effects: dict[str, float]) -> str:
    """What a claim's comparisons can resolve on :data:`HEADLINE`, beside the paper's effects.

    Args:
        pairs: ``(label, a, b)`` comparisons of groups (:data:`~meddet.study.tables.CLAIMS`).
        spreads: the spread of single-seed comparisons per metric.
        paper_effects: the paper's ``a − b`` in mAP points by comparison label (those it
            reports).

    Returns:
        e.g. ``differences above 1.0 mAP points; the paper's effects: nmODE² adds +0.8, LWFF
        adds +0.3 (within our spread: nmODE² adds, LWFF adds)``.
    """
    judged = {}
    for label, a, b in pairs:
        sp = judged_spread(group_metric(rows, a, HEADLINE), group_metric(rows, b, HEADLINE),
                           spreads.get(HEADLINE))
        if sp is not None:
            judged[label] = sp
    if judged:
        lo, hi = min(judged.values()), max(judged.values())
        text = (f"differences above {lo:.1f}–{hi:.1f} {HEADLINE} points (each comparison its "
                "own spread)" if hi > lo else f"differences above {lo:.1f} {HEADLINE} points")
    else:
        text = "unknown (no comparison with a measured spread)"
    if paper_effects:
        text += "; the paper's effects: " + ", ".join(
            f"{label} {d:+.1f}" for label, d in paper_effects.items())
        below = [label for label, d in paper_effects.items()
                 if label in judged and abs(d) <= judged[label]]
        if below:
            text += f" (within our spread: {', '.join(below)})"
    return text


def verdict(a: Stats, b: Stats, spread: float | None = None) -> str:
    """Does ``a`` beat ``b`` by more than the seed-to-seed spread?

    The spread is the larger sample standard deviation of the two rows (``spread`` when a
    row has one seed, typically the MedDet rows' standard deviation).
    """
    if a[2] == 0 or b[2] == 0:
        return "not run"
    sds = [x[1] for x in (a, b) if x[2] > 1]
    sp = judged_spread(a, b, spread)
    d = a[0] - b[0]
    if sp is None:
        return f"{d:+.1f}: one seed, spread unknown, not assessable"
    # one row of several seeds against a single run: that run may be a lucky or unlucky seed
    one = "; one row has one seed" if sds and min(a[2], b[2]) == 1 else ""
    if d > sp:
        return f"**reproduced** ({d:+.1f} > spread {sp:.1f}{one})"
    if d < -sp:
        return f"**contradicted** ({d:+.1f}, beyond spread {sp:.1f}{one})"
    return f"not resolved ({d:+.1f}, within spread {sp:.1f}{one})"


def verdicts_beside(rows: dict[str, dict], a: str, b: str,
                    spreads: dict[str, float | None] | None = None) -> str:
    """:func:`verdict` of group ``a`` against ``b`` on :data:`HEADLINE`, then on
    :data:`BESIDE` (unbolded: it does not decide), e.g. ``**reproduced** (+3.0 > spread
    1.0) · mAP50: not resolved (+1.0, within spread 2.0)``.

    Args:
        spreads: the spread of single-seed comparisons per metric (``None``: unknown).
    """
    spreads = spreads or {}
    v, v50 = (verdict(group_metric(rows, a, k), group_metric(rows, b, k), spreads.get(k))
              for k in (HEADLINE, BESIDE))
    return _beside(v, v50)


def _beside(v: str, v50: str) -> str:
    """The headline verdict ``v``, then the unbolded mAP50 verdict ``v50``."""
    if v50 == "not run":
        return v50
    if v == "not run":  # records older than the headline metric hold mAP50 alone
        v = f"— ({HEADLINE} not recorded)"
    return f"{v} · {BESIDE}: {v50.replace('**', '')}"


def paired(rows: dict[str, dict], a: str, b: str, key: str = "mAP50") -> dict[int, float]:
    """Per seed that both groups ran (and recorded ``key``): ``100 * (a - b)`` of ``key`` on
    the test split."""
    by = {g: {r["seed"]: 100.0 * r["test"][key] for r in rows.values()
              if r["group"] == g and r.get("test", {}).get(key) is not None} for g in (a, b)}
    return {s: by[a][s] - by[b][s] for s in sorted(by[a].keys() & by[b].keys())}


def lite_verdict(med: Stats, lite: Stats, diffs: dict[int, float], margin: float = 1.0, *,
                 key: str = "mAP50", beside: tuple[Stats, Stats] | None = None,
                 beside_key: str = BESIDE) -> str:
    """The MedDet-lite bar: at most ``margin`` points below MedDet (same schedule), as a
    paragraph; ``diffs`` are the per-seed differences (:func:`paired`), all of test ``key``.
    ``beside``: MedDet's and MedDet-lite's test ``beside_key``, named after the means."""
    d = lite[0] - med[0]
    text = (f"MedDet {fmt(med)} vs MedDet-lite {fmt(lite)} test {key}: difference of the means "
            f"{d:+.1f} points")
    if beside is not None:
        text += (f" ({beside_key}: MedDet {fmt(beside[0])} vs MedDet-lite {fmt(beside[1])}, "
                 f"{beside[1][0] - beside[0][0]:+.1f})")
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


def noise_levels(r: dict, key: str = "mAP50") -> list[tuple[str, float | None]]:
    """A row's noise sweep as ``[(level, test key %)]``, clean first (``[]``: not swept; the
    value ``None`` where the record lacks ``key``)."""
    return [(x["noise"] or "clean", None if x.get(key) is None else 100 * x[key])
            for x in r["test"].get("noise_sweep", [])]


def level_stats(rs: list[dict], levels: list[str], key: str = "mAP50") -> list[Stats]:
    """Mean, sample sd and count of test ``key`` over the runs ``rs`` at each noise level."""
    return [stats([v for r in rs for n_, v in noise_levels(r, key) if n_ == n and v is not None])
            for n in levels]


def drops(rows: dict[str, dict], group: str, key: str = "mAP50") -> dict[int, float]:
    """Per seed of ``group``: test ``key`` (%) clean minus at the sweep's last (noisiest)
    level."""
    out = {}
    for r in rows.values():
        lv = noise_levels(r, key) if r["group"] == group and "test" in r else []
        if len(lv) > 1 and lv[0][1] is not None and lv[-1][1] is not None:
            out[r["seed"]] = lv[0][1] - lv[-1][1]
    return out


def noise_verdict(rows: dict[str, dict], with_g: str, without_g: str,
                  key: str = "mAP50") -> str:
    """Does ``with_g`` (nmODE²) lose less of test ``key`` from clean to the noisiest level than
    ``without_g``? The verdict of the mean drops (without − with), then the paired per-seed
    differences."""
    with_, without = drops(rows, with_g, key), drops(rows, without_g, key)
    if not (with_ and without):
        return "not run"
    per = {s: with_[s] - without[s] for s in sorted(with_.keys() & without.keys())}
    v = verdict(stats(list(without.values())), stats(list(with_.values())))
    return v + ("; per seed, drop with − drop without: "
                + ", ".join(f"s{s} {d:+.1f}" for s, d in per.items()) if per else "")


def teacher_set(r: dict) -> str | None:
    """Which set of teachers taught the distilled row ``r`` (``None``: not distilled).

    Teachers are known by their test mAP50 at full precision, recorded with every distilled
    row (``teachers``); two trainings of a teacher do not give the same float.
    """
    return json.dumps(r["teachers"], sort_keys=True) if "teachers" in r else None


def teacher_scores(rows: dict[str, dict], r: dict) -> dict[str, tuple[float | None, float]]:
    """The test (mAP, mAP50) in % of each teacher that taught ``r``, by teacher row id.

    mAP comes from the row's ``teachers_mAP``; records without it take it from the study's own
    teacher row when that row's mAP50 is exactly the recorded one (the same training), else
    ``None``.
    """
    known = r.get("teachers_mAP") or {}
    out = {}
    for n, m50 in r["teachers"].items():
        m = known.get(n)
        own = rows.get(n, {}).get("test", {})
        if m is None and own.get("mAP50") == m50:
            m = own.get("mAP")
        out[n] = (None if m is None else 100.0 * m, 100.0 * m50)
    return out


def taught_apart(rows: dict[str, dict], a: str, b: str) -> bool:
    """Whether two groups' rows were distilled from different sets of teachers."""
    sets = [{teacher_set(r) for r in rows.values() if r.get("group") == g and "teachers" in r}
            for g in (a, b)]
    return all(sets) and sets[0] != sets[1]


def noise_beside(rows: dict[str, dict], with_g: str, without_g: str) -> str:
    """:func:`noise_verdict` on :data:`HEADLINE`, then (unbolded) on :data:`BESIDE`."""
    return _beside(noise_verdict(rows, with_g, without_g, HEADLINE),
                   noise_verdict(rows, with_g, without_g, BESIDE))


# The one-word verdicts a claim can end with (the report's summary and the README's table).
KINDS = ("reproduced", "contradicted", "not resolved", "not run")


def verdict_kind(v: str) -> str:
    """The word a :func:`verdict` (or :func:`noise_verdict`) text is decided by: reproduced,
    contradicted, not resolved (within the spread, or one seed each with no spread to judge
    by) or not run."""
    if v == "not run":
        return "not run"
    for k in ("reproduced", "contradicted"):
        if v.startswith(f"**{k}**"):
            return k
    return "not resolved"


def claim_verdict(kinds: list[str]) -> tuple[str, str]:
    """One claim's verdict from those of its comparisons, and how they split.

    Every comparison must be reproduced for the claim to be; one contradicted comparison
    contradicts it (the paper claims each); anything else is not resolved; a claim with a
    comparison still missing is not run, however the others came out.

    Returns:
        ``(kind, detail)``, e.g. ``("not resolved", "2 of 3 comparisons reproduced, 1 not
        resolved")`` (not resolved: within the spread, or one seed with no spread to judge by).
    """
    n = len(kinds)
    c = {k: kinds.count(k) for k in KINDS}
    if c["not run"]:
        kind = "not run"
    elif c["contradicted"]:
        kind = "contradicted"
    elif c["reproduced"] == n:
        kind = "reproduced"
    else:
        kind = "not resolved"
    words = {"reproduced": "reproduced", "contradicted": "contradicted",
             "not resolved": "not resolved", "not run": "not run yet"}
    if c["not run"] == n:
        return kind, f"none of its {n} comparisons measured yet" if n > 1 else "not measured yet"
    parts = [f"{c[k]} {words[k]}" for k in KINDS if c[k]]
    detail = (f"{parts[0].split(' ', 1)[0]} of {n} comparison{'s' if n > 1 else ''} "
              f"{parts[0].split(' ', 1)[1]}" + "".join(f", {p}" for p in parts[1:]))
    return kind, detail
