"""The study's Markdown report, rendered from its records alone.

:func:`render` turns the rows (``runs/<row>/row.json``) and ``study.json`` into the report: a
summary of the paper's claims with their verdicts, then Tables I–V, the noise sections, the
ImageNet-initialised rows, the MedDet-lite bar, the σ/τ sweep and every row with its commands.
Every table shows test COCO mAP@[.5:.95] first (the headline, on which verdicts are decided)
and mAP50 beside it; every table with distilled rows names the teachers that taught them. It is a pure function of the
records, so a committed report can be checked to be exactly their rebuild.
:func:`write_report` writes it and its two noise plots (``img/`` beside the report).
"""

from __future__ import annotations

from pathlib import Path

from meddet import paper
from meddet._io import atomic_write_text
from meddet.data.generate import DEFAULT_PHANTOM
from meddet.engine.curves import PLATEAU_POINTS, LastQuarter, describe_training
from meddet.study.noise import (
    noise_rows,
    plot_curves,
    plot_noise,
    plot_noise_alone,
    write_noise_alone,
    write_noise_table,
)
from meddet.study.records import load_rows, read_meta
from meddet.study.tables import (
    CLAIMS,
    DEFAULT_SIGMA_TAU,
    KD,
    NOISE_PAIRS,
    PAPER_FIGURES,
    PLACEMENTS,
    PLAIN,
    TEACHERS,
    gpu_rows,
    where,
)
from meddet.study.verdicts import (
    BESIDE,
    HEADLINE,
    Stats,
    claim_verdict,
    fmt,
    group_cost,
    group_metric,
    group_seconds,
    lite_verdict,
    noise_beside,
    noise_verdict,
    overhead,
    paired,
    resolution,
    taught_apart,
    teacher_scores,
    teacher_set,
    verdict,
    verdict_kind,
    verdicts_beside,
)


def write_report(out: Path, report: Path, planned: list[str] | None = None) -> str:
    """Render the report of the study folder ``out`` into ``report`` (and its plots).

    Args:
        out: the study folder (``runs/<row>/row.json``, ``study.json``).
        report: the Markdown file to write; the plots go to ``report.parent / "img"``.
        planned: row ids the report counts as planned (``None``: no such line).

    Returns:
        the report's text.
    """
    out, report = Path(out), Path(report)
    rows = load_rows(out)
    text = render(rows, read_meta(out), planned, source=(out, report))
    atomic_write_text(report, text)
    plot_noise(rows, report.parent / "img" / "results_noise.png")
    plot_noise_alone(rows, report.parent / "img" / "results_noise_alone.png")
    plot_curves(rows, report.parent / "img" / "results_curves.png")
    return text


TeacherSet = tuple[str, dict[str, tuple[float | None, float]], list[str]]


def _teacher_sets(rows: dict[str, dict]) -> list[TeacherSet]:
    """(key, the teachers' test (mAP, mAP50) by teacher row, the rows it taught) per set of
    teachers, in the order of the first row each taught (rows sorted by id)."""
    sets: dict[str, TeacherSet] = {}
    for rid, r in sorted(rows.items()):
        key = teacher_set(r)
        if key is not None:
            sets.setdefault(key, (key, teacher_scores(rows, r), []))[2].append(rid)
    return list(sets.values())


def _teacher_names(scores: dict) -> list[str]:
    """The teacher row ids of ``scores``, the paper's teachers first in their order."""
    first = [n for n in (f"teacher-{t}" for t in TEACHERS) if n in scores]
    return first + sorted(n for n in scores if n not in first)


def _label(teacher_row: str) -> str:
    return teacher_row.removeprefix("teacher-").replace("gfl_", "GFL-").upper()


def _scores(scores: dict[str, tuple[float | None, float]], names: list[str]) -> str:
    """``37.8 / 76.0 / 75.7 (mAP50 93.7 / 99.9 / 99.2)`` (``—``: mAP not recorded)."""
    maps = " / ".join(_num(scores[n][0], 1) for n in names)
    return f"{maps} ({BESIDE} {' / '.join(f'{scores[n][1]:.1f}' for n in names)})"


def teacher_sets(rows: dict[str, dict]) -> list[str]:
    """One line per set of teachers that taught distilled rows (teachers are retrained, same
    recipe and seed, on every fresh machine, so rows of one table may have different ones)."""
    sets = _teacher_sets(rows)
    if not sets:
        return []
    names = _teacher_names(sets[0][1])
    out = [f"* teachers: retrained on every fresh machine (same recipe and seed); "
           f"{len(sets)} set(s) taught the distilled rows (test {HEADLINE} of "
           f"{' / '.join(_label(n) for n in names)}, then their {BESIDE}; —: not recorded):"]
    for i, (_, scores, ids) in enumerate(sets, 1):
        out.append(f"  * set {i}: {_scores(scores, _teacher_names(scores))}: {', '.join(ids)}")
    return out


def in_groups(rows: dict[str, dict], groups: list[str]) -> list[dict]:
    """The rows of ``groups``."""
    return [r for r in rows.values() if r.get("group") in groups]


def teachers_line(rows: dict[str, dict], shown: list[dict]) -> str | None:
    """The line under a table naming the teachers of its distilled rows (those of ``shown``):
    their scores when one set taught them all, else how many sets (``None``: none
    distilled)."""
    sets = _teacher_sets(rows)
    index = {key: i for i, (key, _, _) in enumerate(sets, 1)}
    mine = {teacher_set(r): r for r in shown}
    mine.pop(None, None)
    if not mine:
        return None
    which = sorted(index[k] for k in mine)
    if len(mine) > 1:
        return (f"Teachers: **{len(mine)} different sets** taught the distilled rows here (sets "
                f"{', '.join(map(str, which))} of the header: teachers retrained on different "
                "machines), so a difference between rows of different sets mixes the method with "
                "its teachers.\n")
    scores = teacher_scores(rows, next(iter(mine.values())))
    names = _teacher_names(scores)
    of = f" (set {which[0]} of the header)" if len(sets) > 1 else ""
    return (f"Teachers: one set{of} taught every distilled row here: "
            f"{' / '.join(_label(n) for n in names)} test {HEADLINE} {_scores(scores, names)}.\n")


def cell(rows: dict[str, dict], group: str, key: str, cls: str | None = None) -> str:
    """:func:`fmt` of ``group``'s test ``key``; ``—`` when its rows ran but none recorded
    ``key`` (records older than the metric)."""
    ms = group_metric(rows, group, key, cls)
    ran = any(r["group"] == group and "test" in r for r in rows.values())
    return "—" if ms[2] == 0 and ran else fmt(ms)


def _benches(rows: dict[str, dict]) -> list[tuple[dict, dict[str, dict]]]:
    """Every ``meddet bench`` result of the study (CPU first, then GPU by batch), each with
    its eager-PyTorch rows by model name."""
    found = sorted((r["bench"] for r in rows.values() if "bench" in r),
                   key=lambda b: (b.get("device") != "cpu", b.get("batch_size") or 1))
    return [(b, {m["name"]: m for m in b.get("models", [])
                 if m.get("runtime", "torch") == "torch"}) for b in found]


def _bench_label(bench: dict) -> str:
    """``CPU b1`` / ``GPU b32``: the column name of one bench result."""
    kind = "CPU" if bench.get("device") == "cpu" else "GPU"
    return f"{kind} b{bench.get('batch_size') or 1}"


def _secs(by_device: dict[str, float]) -> str:
    if len(by_device) == 1:
        return f"{next(iter(by_device.values())):.0f} s"
    return " / ".join(f"{v:.0f} s ({d})" for d, v in by_device.items()) or "—"


def _spread(rows: dict[str, dict], group: str, key: str,
            default: float | None = None) -> float | None:
    """The seed-to-seed spread of ``group``'s test ``key`` (``default`` below two seeds)."""
    m = group_metric(rows, group, key)
    return m[1] if m[2] > 1 else default


def _per_image(by_device: dict[str, float]) -> str:
    """``0.31 s`` (one device) or ``0.31 s (cpu) / 0.004 s (cuda)``; ``—`` when not recorded."""
    def f(v: float) -> str:
        return f"{v:.3g} s"
    if len(by_device) == 1:
        return f(next(iter(by_device.values())))
    return " / ".join(f"{f(v)} ({d})" for d, v in by_device.items()) or "—"


def _overhead_line(rows: dict[str, dict], groups: list[tuple[str, str]],
                   base: tuple[str, str]) -> str | None:
    """One line: each group's training cost per image against ``base``'s on the same device;
    ``None`` when no pair ran on one device."""
    parts = [f"{label} {' / '.join(f'{x:.2f}× ({d})' for d, x in o.items())}"
             for label, g in groups if (o := overhead(rows, g, base[1]))]
    if not parts:
        return None
    return (f"Training cost per image against {base[0]} trained alone on the same device "
            f"(the distillation overhead; rows sharing a machine slow each other, so this is "
            f"indicative): {'; '.join(parts)}.\n")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, nd: int) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _teacher_gap(med: Stats, m: Stats, spread: float | None
                 ) -> tuple[float, float | None] | None:
    """MedDet's difference to one teacher and the spread it is judged by (the larger sd of a
    multi-seed side, else ``spread``); ``None`` when either did not run."""
    if not (med[2] and m[2]):
        return None
    return med[0] - m[0], max([x[1] for x in (med, m) if x[2] > 1], default=spread)


def _teacher_kind(med: Stats, m: Stats, spread: float | None) -> str:
    """Claim 2 against one teacher: as accurate or better (reproduced), less accurate beyond
    the spread (contradicted), no spread to judge by (not resolved), or not run."""
    gap = _teacher_gap(med, m, spread)
    if gap is None:
        return "not run"
    d, sp = gap
    return "not resolved" if sp is None else "contradicted" if d < -sp else "reproduced"


def _versus_teacher(med: Stats, m: Stats, spread: float | None) -> str | None:
    """MedDet's difference to one teacher judged by the spread, e.g. ``-1.0 (within the
    spread 2.0: as accurate, ...)``; ``None`` when either did not run."""
    gap = _teacher_gap(med, m, spread)
    if gap is None:
        return None
    d, sp = gap
    if sp is None:
        word = "one seed each, spread unknown"
    elif abs(d) <= sp:
        word = f"within the spread {sp:.1f}: as accurate, as far as these seeds tell"
    else:
        word = f"beyond the spread {sp:.1f}: **{'less' if d < 0 else 'more'} accurate**"
    return f"{d:+.1f} ({word})"


def _spreads(rows: dict[str, dict]) -> tuple[dict[str, float | None],
                                             dict[str, dict[str, float | None]]]:
    """The spread a single-seed row is judged by, per metric (its own table's multi-seed
    row: MedDet's), and per claim of :data:`CLAIMS` (Table IV's: the nmODE² row's)."""
    metrics = (HEADLINE, BESIDE)
    spread = {k: _spread(rows, "meddet", k) for k in metrics}
    nm = {k: _spread(rows, "abl-nmode", k, spread[k]) for k in metrics}
    return spread, {"1": spread, "3": spread, "4": nm, "5": spread, "alone": {},
                    "imagenet": spread}


def paper_effects(claim: str) -> dict[str, float]:
    """The paper's ``a − b`` (mAP points on CDH-1848) per comparison of ``claim`` that it
    reports both sides of."""
    figures = PAPER_FIGURES.get(claim, {})
    out = {}
    for label, a, b in CLAIMS[claim]:
        if a in figures and b in figures:
            out[label] = round(paper.MAP[figures[a]] - paper.MAP[figures[b]], 1)
    return out


# The paper's six claims, as the report's summary and the README's table state them.
CLAIM_TEXT = {
    "1": "MedDet beats the plain student and MGD, LD, FGD",
    "2": "MedDet about as accurate as its teachers at a fraction of the cost",
    "3": "nmODE², LWFF and AATM each add accuracy",
    "4": "nmODE² helps in the head, not in the backbone or FPN",
    "5": "LWFF beats sum and concatenation",
    "6": "nmODE² makes the detector more robust to MRI noise",
}


def _summary(rows: dict[str, dict], verdicts: dict[str, str],
             spread: dict[str, float | None], w, resolves: dict[str, str]) -> None:
    """The six claims, each with the verdicts of the tables below, in one place."""
    cost = []
    for t in TEACHERS:
        v, v50 = (_versus_teacher(group_metric(rows, "meddet", k),
                                  group_metric(rows, f"teacher-{t}", k), spread[k])
                  for k in (HEADLINE, BESIDE))
        if v50 is not None:  # a record older than mAP has mAP50 alone
            cost.append(f"MedDet − GFL-{t[4:].upper()} {v or '— (mAP not recorded)'} · "
                        f"{BESIDE}: {v50.replace('**', '')}")
    benches = [(bench, b) for bench, b in _benches(rows) if "meddet" in b and "gfl_r50" in b]
    if benches:
        b = benches[0][1]
        speed = ", ".join(f"{x['meddet']['fps'] / x['gfl_r50']['fps']:.2f}× its FPS on "
                          f"{bench.get('device_name')} (batch {bench.get('batch_size')})"
                          for bench, x in benches)
        cost.append(f"cost against GFL-R50: {b['meddet']['params_m'] / b['gfl_r50']['params_m']:.0%} "
                    f"of its parameters, {b['meddet']['gflops'] / b['gfl_r50']['gflops']:.0%} of "
                    f"its GFLOPs, {speed}")
    w("## The paper's claims on this benchmark, in one place\n")
    w(f"Decided on test {HEADLINE} (COCO mAP@[.5:.95]); the same rule on {BESIDE} follows each "
      "verdict after ·. **reproduced**: the difference has the paper's sign and exceeds the "
      "seed-to-seed spread; **contradicted**: it exceeds the spread with the opposite sign; not "
      "resolved: it is within the spread; not run: a row is missing; [different teacher sets]: "
      "the two sides were distilled from teachers retrained on different machines (listed "
      "above), so the difference mixes the method with its teachers. *What the spreads "
      "resolve*: the smallest difference each comparison can count (the spread it is judged "
      "by), beside the paper's effect sizes on its own data; an effect within our spread "
      "cannot be decided here even if it exists. Details under each table.\n")
    w("| claim (paper) | the paper's setting: distilled student | what the spreads resolve | "
      "proxy: `meddet_lite` trained alone (CPU) |")
    w("|---|---|---|---|")
    # each claim as the README states it, with where the paper makes it
    source = {"1": "Table I", "2": "Table II", "3": "Table III", "4": "Table IV", "5": "Table V",
              "6": "clean → lowest SNR, with vs without"}
    cells = {"1": (verdicts["1"], resolves["1"], "—"),
             "2": ("; ".join(cost) or "not run", "—", "—"),
             "3": (verdicts["3"], resolves["3"], "—"),
             "4": (verdicts["4"], resolves["4"], verdicts["alone"]),
             "5": (verdicts["5"], resolves["5"], "—"),
             "6": ("; ".join(f"{label} (`{a}` vs `{b}`): {noise_beside(rows, a, b)}"
                             for label, a, b in NOISE_PAIRS), "—",
                   noise_beside(rows, "alone-lite-head", "alone-lite-none"))}
    for k, (v, res, proxy) in cells.items():
        w(f"| {k}. {CLAIM_TEXT[k]} ({source[k]}) | {v} | {res} | {proxy} |")
    w("| (not a claim of the paper, whose detectors start from ImageNet) what ImageNet "
      f"initialisation buys the student | {verdicts['imagenet']} | {resolves['imagenet']} "
      "| — |")
    w("")


def _header(rows: dict[str, dict], meta: dict, planned: list[str] | None,
            source: tuple[Path, Path] | None, w) -> None:
    """The title, what the figures are, where the records are, and how the rows were run."""
    w("# Reproduction study: Tables I–V and the noise claim on the synthetic benchmark\n")
    w("Generated by `meddet study` from the run directories it trained; every "
      "figure below is a measurement. Ours: **test mAP in %** (COCO mAP@[.5:.95], the headline "
      "every verdict is decided on) with test mAP50 beside it, on the synthetic CDH test "
      "split (pycocotools), mean ± sample standard deviation over seeds (n = seeds). The "
      "paper's figures are on the private CDH-1848 set and are shown for orientation only: "
      "the two columns are not comparable in absolute terms, only in their ordering. "
      + ("The recipe and how it was calibrated: `docs/training.md`, section *The CPU recipe "
         "on the default phantom*; the rows not run yet are listed below, with what they need."
         if meta.get("phantom") == DEFAULT_PHANTOM else
         "What the numbers mean, what is missing and why: `docs/distillation.md`, section "
         "*Measured on the synthetic benchmark*.") + "\n")
    if source:
        out, report = source
        w(f"Records: every row's measurements are in `{out}/runs/<row>/row.json` and the "
          f"commands in `{out}/study.json`; `meddet study report {out} --out {report}` "
          "rewrites this file and its plots from them alone.\n")
    if not meta:
        return
    phantom = meta.get("phantom")
    if phantom and phantom != DEFAULT_PHANTOM:
        w(f"**These rows were measured on the synthetic phantom `{phantom}`** (`meddet data synth "
          f"--phantom {phantom}`); the default phantom is now `{DEFAULT_PHANTOM}`, so the figures "
          "describe the older, easier images and are not comparable with a study on the "
          "default phantom.\n")
    calls = meta.get("invocations") or [meta]  # a study.json of one call: flat
    for c in calls:
        on = f"on {c['device_name']}, " if c.get("device_name") else ""
        w(f"* command ({c.get('jobs')} rows at a time, {on}finished {c.get('finished')}): "
          f"`{c.get('command', '?')}`")
    te = meta.get("teacher_epochs")
    w(f"* schedule: `--config {meta.get('config')}` {' '.join(meta.get('extra') or [])}"
      f"{f'; teachers {te} epochs' if te else ''}; data `{meta.get('data')}`")
    # a study merged from several machines describes them in device_name alone
    facts = [f"{v} {k}" if k == "CPUs" else f"{k} {v}" for k, v in (
        ("CPUs", meta.get("cpus")), ("torch", meta.get("torch")),
        ("Python", meta.get("python"))) if v is not None]
    w(f"* machine: {meta.get('device')} ({meta.get('device_name')})"
      + "".join(f", {f}" for f in facts))
    if planned:
        missing = [r for r in planned if r not in rows]
        w(f"* rows finished: {len(planned) - len(missing)} of {len(planned)} planned"
          + (f"; not run (yet): {', '.join(missing)}" if missing else ""))
        gpu = gpu_rows(missing)
        if gpu:
            w(f"  * {len(gpu)} of them are GPU rows (the three ResNet teachers, every row "
              "distilled from them, the GPU timings): `examples/reproduce/gpu_distill.sh` "
              "runs them in resumable slots on a GPU, `examples/reproduce/cpu_study.sh` on a "
              "2-core CPU over several sittings (hours per teacher)")
        if len(gpu) < len(missing):
            w(f"  * {len(missing) - len(gpu)} need no teachers and can run on a CPU: "
              "`meddet study run --device cpu --only ROW,...`")
    w("* wall-clock per row: training + test evaluation of one run, measured with the "
      "rows of one command sharing the machine (so it overstates a run alone); where a "
      "table's seeds ran on different devices, the mean per device.")
    w("* training s per image: the epochs' wall-clock in the row's `results.csv` (training and "
      "its validations) divided by the images it trained on (iterations × batch); rows "
      "sharing a machine slow each other, as above. Records older than this column show —.")
    w("* seeds of one row may come from different devices (the Rows table says which): "
      "same data, config, seed and code, but not the same arithmetic, so they are "
      "independent samples of the same training recipe rather than repeats.")
    for line in teacher_sets(rows):
        w(line)
    w("")


def render(rows: dict[str, dict], meta: dict, planned: list[str] | None = None,
           source: tuple[Path, Path] | None = None) -> str:
    """The report's Markdown.

    Args:
        rows: the finished rows by id (:func:`~meddet.study.records.load_rows`).
        meta: ``study.json`` (``{}``: no command or machine lines).
        planned: row ids counted as planned (``None``: no "rows finished" line).
        source: the study folder and report path it is written from and to, named in the
            report so that a reader can rebuild it from the rows alone.
    """
    L: list[str] = []
    w = L.append
    metrics = (HEADLINE, BESIDE)
    spread, spreads = _spreads(rows)
    verdicts = {k: "; ".join(
        f"{label}: {verdicts_beside(rows, a_, b_, spreads[k])}"
        + (" [different teacher sets]" if taught_apart(rows, a_, b_) else "")
        for label, a_, b_ in pairs) for k, pairs in CLAIMS.items()}
    resolves = {k: resolution(rows, pairs, spreads[k], paper_effects(k))
                for k, pairs in CLAIMS.items()}
    _header(rows, meta, planned, source, w)
    _summary(rows, verdicts, spread, w, resolves)

    def table(title: str, items: list[tuple[str, str, float | None]], note: str = "",
              min_seeds: int = 0, one_seed: tuple[str, ...] = ()) -> None:
        """``min_seeds``: the seeds planned for this table; rows that ran but have fewer
        are named under the table, but for the groups in ``one_seed``, which decide no claim
        and for which one seed is enough (said under the table while one of them has fewer)."""
        w(f"## {title}\n")
        if note:
            w(note + "\n")
        w(f"| row | paper mAP | ours {HEADLINE} | ours {BESIDE} | protrusion AP50 | "
          "wall-clock per run | training s per image |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for label, group, paper_map in items:
            w(f"| {label} | {paper_map or '—'} | {cell(rows, group, HEADLINE)} | "
              f"{cell(rows, group, BESIDE)} | {cell(rows, group, 'mAP50', 'protrusion')} | "
              f"{_secs(group_seconds(rows, group))} | {_per_image(group_cost(rows, group))} |")
        w("")
        line = teachers_line(rows, in_groups(rows, [group for _, group, _ in items]))
        if line:
            w(line)
        short = [(label.strip("*"), n) for label, group, _ in items
                 if 0 < (n := group_metric(rows, group)[2]) < min_seeds and group not in one_seed]
        ran_once = [label for label, group, _ in items
                    if group in one_seed and 0 < group_metric(rows, group)[2] < min_seeds]
        if ran_once:
            w(f"One seed is enough for {', '.join(ran_once)}: they place the paper's other "
              "lightweight detectors and decide no claim; their further seeds, when run, "
              "narrow the spread.\n")
        if short:
            w(f"Fewer than the {min_seeds} seeds planned for this table, so far: "
              + ", ".join(f"{label} (n={n})" for label, n in short)
              + "; their other seeds are among the rows not run yet (above), and a verdict "
              "involving them says so.\n")

    def claims(key: str) -> None:
        w(f"Claims: {verdicts[key]}.\n")
        w(f"What the spreads resolve: {resolves[key]}.\n")

    # the study's own device and per-row flags (a study run on one device), else a GPU
    dev = meta.get("device") if meta.get("device") in ("cpu", "cuda") else "cuda"
    flags = " ".join(meta.get("extra") or [])

    def regen(tables: str, device: str = dev, extra: str = "") -> None:
        """The command that (re)runs the rows of ``tables``."""
        te = meta.get("teacher_epochs") if tables != "alone" else None
        more = f" --extra {flags}" if flags and tables != "alone" else ""
        w(f"Regenerate: `meddet study run --config "
          f"{meta.get('config') or 'cpu-small'} --tables {tables} --seeds 0,1,2 --device "
          f"{device}{f' --teacher-epochs {te}' if te else ''}{more}{extra}` (finished rows are "
          "kept; `meddet study report` rewrites this file from them alone).\n")

    p = paper.MAP.get
    table("Table I: lightweight detectors and distillation methods",
          [*[(f"GFL {m[4:]}", f"plain-{m}", p(m)) for m in PLAIN],
           ("MedDet student alone (nmODE² head, no teachers)", "alone-meddet", None),
           *[(k.upper() + " (GFL-MobileNetV2 student, best teacher)", k, p(k)) for k in KD],
           ("**MedDet** (3 teachers)", "meddet", p("meddet"))], min_seeds=3,
          one_seed=tuple(f"plain-{m}" for m in PLAIN[1:]))
    line = _overhead_line(rows, [("MedDet", "meddet"), *[(k.upper(), k) for k in KD],
                                 ("MedDet student alone", "alone-meddet")],
                          ("GFL-MobileNetV2", "plain-gfl_mbv2"))
    if line:
        w(line)
    claims("1")
    regen("1")

    _table2(rows, w)
    regen("2")

    table("Table III: ablation (cumulative, all distilled from the three teachers)",
          [("KD baseline: teachers summed, no AATM, no nmODE²", "abl-base", p("abl_base")),
           ("+ nmODE² (head)", "abl-nmode", p("abl_nmode")),
           ("+ nmODE² + LWFF", "abl-lwff", p("abl_lwff")),
           ("+ nmODE² + LWFF + AATM (MedDet)", "meddet", p("abl_aatm"))],
          "The paper's Table III starts from the distilled student without nmODE² (84.2), not "
          "from the plain GFL-MobileNetV2 (80.8); ours does the same.", min_seeds=3)
    claims("3")
    regen("3")
    table("Table IV: nmODE² placement (on the KD baseline of Table III)",
          [("no nmODE²", "abl-base", p("nmode_none")),
           ("nmODE² in the backbone", "nmode-backbone", p("nmode_backbone")),
           ("nmODE² in the FPN", "nmode-fpn", p("nmode_fpn")),
           ("nmODE² in the head", "abl-nmode", p("nmode_head"))],
          "The backbone and FPN rows have one seed; a difference counts only if it is larger "
          "than the head row's seed-to-seed spread.")
    claims("4")
    regen("4")
    table("Table V: fusion of the three teachers (full MedDet)",
          [("sum", "fusion-sum", p("fusion_sum")), ("concat", "fusion-concat", p("fusion_concat")),
           ("LWFF", "meddet", p("fusion_lwff"))],
          "Single seed except LWFF (= MedDet).")
    claims("5")
    regen("5")

    write_noise_table(rows, w)
    line = teachers_line(rows, noise_rows(rows))
    if line:
        w(line)
    regen("noise")

    table("Table IV, CPU proxy: nmODE² placement in `meddet_lite` trained alone (no teachers)",
          [(f"nmODE² {where(q)}", f"alone-lite-{q}", p(f"nmode_{q}")) for q in PLACEMENTS],
          "No teachers, so this answers a narrower question than Table IV: where nmODE² helps "
          "the small student trained on its own. The paper's column is its Table IV (distilled "
          "student), for orientation. Each row also ran the noise sweep (next section).")
    claims("alone")
    regen("alone", "cpu", " --jobs 2 --threads-per-job 1")
    write_noise_alone(rows, w)

    table("ImageNet initialisation: what pretraining buys the student",
          [("GFL mbv2, from scratch", "plain-gfl_mbv2", p("gfl_mbv2")),
           ("GFL mbv2, ImageNet-initialised", "imagenet-plain-gfl_mbv2", p("gfl_mbv2")),
           ("MedDet, from scratch", "meddet", p("meddet")),
           ("MedDet, ImageNet-initialised student", "imagenet-meddet", p("meddet"))],
          "The paper's detectors start from ImageNet weights; ours train from scratch unless "
          "asked. These rows repeat GFL-MobileNetV2 and MedDet with the student's MobileNetV2 "
          "backbone initialised from torchvision's ImageNet weights (`model.pretrained: "
          "imagenet`), distilled from the same teachers; optional (`--tables imagenet` or "
          "`all,imagenet`), as the weights must be downloaded or cached (offline: set "
          "`TORCH_HOME` to a folder whose `hub/checkpoints/` holds torchvision's MobileNetV2 "
          "file).", min_seeds=3)
    claims("imagenet")
    regen("imagenet")

    if group_metric(rows, "lite", BESIDE)[2]:
        w("## MedDet-lite: accuracy next to the paper-architecture student\n")
        med, lite = ([group_metric(rows, g, k) for k in metrics] for g in ("meddet", "lite"))
        w(lite_verdict(med[0], lite[0], paired(rows, "lite", "meddet", HEADLINE), key=HEADLINE,
                       beside=(med[1], lite[1])))
        line = teachers_line(rows, in_groups(rows, ["meddet", "lite"]))
        if line:
            w(line)

    _sweep(rows, spread[HEADLINE], w)

    w("## Rows\n")
    w(_plateau_line(rows))
    line = _spread_line(rows)
    if line:
        w(line)
    if any(r.get("val_curve") for r in rows.values()):
        w("Learning curves of every row (validation mAP50 by iteration, one panel per row, one "
          "line per seed): `img/results_curves.png` beside this report; the points are each "
          "row's `val_curve` in its `row.json`.\n")
    w("| row | device | seconds | val mAP50, last quarter | command |")
    w("|---|---|---:|---|---|")
    for r in sorted(rows.values(), key=lambda r: r["id"]):
        w(f"| {r['id']} | {r.get('device', '?')} | {r['seconds']:.0f} | {_quarter(r)} | "
          f"{_trained(r)}`{' && '.join(r['commands'])}` |")
    w("")
    return "\n".join(L)


def _trained(row: dict) -> str:
    """For a row that resumed a run trained before the study placed it: how it was trained."""
    t = row.get("trained_with")
    return f"(trained before: {describe_training(t)}) " if t else ""


def _quarter(row: dict) -> str:
    """``0.770 → 0.806 (+3.6)`` from a row's ``last_quarter`` record; ``—`` without one."""
    q = row.get("last_quarter")
    if not q:
        return "—"
    lq = LastQuarter.from_dict(q)
    return f"{lq.start:.3f} → {lq.end:.3f} ({lq.gain_points:+.1f})"


#: The largest seed-to-seed standard deviation of test mAP50 (points) a row with three or more
#: seeds may have before the report asks for an explanation.
MAX_SD_POINTS = 2.0


def _spread_line(rows: dict[str, dict]) -> str | None:
    """Which groups of three or more seeds have a test mAP50 standard deviation above
    :data:`MAX_SD_POINTS`; ``None`` when no group has three seeds."""
    groups = sorted({r["group"] for r in rows.values() if "test" in r})
    sds = {g: ms for g in groups if (ms := group_metric(rows, g, BESIDE))[2] >= 3}
    if not sds:
        return None
    wide = [f"{g} ({ms[1]:.1f}{_mixed(rows, g)})" for g, ms in sds.items()
            if ms[1] > MAX_SD_POINTS]
    return (f"Seed spread: {len(sds) - len(wide)} of {len(sds)} rows with three or more seeds "
            f"have a test {BESIDE} standard deviation of at most {MAX_SD_POINTS:g} points"
            + (f"; above it: {', '.join(wide)}" if wide else "") + ".\n")


def _bf16(row: dict) -> bool:
    """Whether a row trained under bfloat16 autocast (``--cpu-amp`` in its training command,
    or a run trained before the study that recorded it)."""
    t = row.get("trained_with") or {}
    return bool(t.get("cpu_amp")) or "--cpu-amp" in (row.get("commands") or [""])[0].split()


def _mixed(rows: dict[str, dict], group: str) -> str:
    """``; its seeds mix ...`` when a group's seeds trained in different arithmetic (float32
    and bfloat16, or on different devices), which widens its spread; else ``""``."""
    rs = [r for r in rows.values() if r.get("group") == group and "test" in r]
    why = []
    if len({_bf16(r) for r in rs}) > 1:
        n = sum(_bf16(r) for r in rs)
        why.append(f"{n} of {len(rs)} seeds trained in bfloat16, the others in float32")
    if len({r.get("device") for r in rs}) > 1:
        why.append("its seeds ran on different devices")
    return "".join(f"; {w}" for w in why)


def _plateau_line(rows: dict[str, dict]) -> str:
    """Which trained rows reached a plateau (val mAP50 gains under 1 point over the last
    quarter of their schedule), as far as their records tell."""
    trained = [r for r in rows.values() if "test" in r]
    known = [r for r in trained if r.get("last_quarter")]
    rule = (f"a row is on a plateau when its validation mAP50 gains under {PLATEAU_POINTS:g} "
            "point over the last quarter of its schedule (from the last validation at or "
            "before 75 % of its iterations to its end; column *val mAP50, last quarter*)")
    if not known:
        return f"Plateau: {rule}; no row here records its learning curve.\n"
    rising = sorted(r["id"] for r in known if not LastQuarter.from_dict(r["last_quarter"]).plateau)
    unknown = len(trained) - len(known)
    return (f"Plateau: {rule}. {len(known) - len(rising)} of {len(known)} rows with a "
            f"learning curve are on one" + (f"; not: {', '.join(rising)}" if rising else "")
            + (f"; {unknown} row(s) record no curve" if unknown else "") + ".\n")


def _table2(rows: dict[str, dict], w) -> None:
    """Table II: the teachers' and students' accuracy beside their measured cost, one FPS
    column per ``meddet bench`` row (CPU batch 1, GPU batch 1 and 32)."""
    p = paper.MAP.get
    w("## Table II: teachers and student, accuracy and cost\n")
    benches = _benches(rows)
    fps_cols = [f"FPS {_bench_label(b)}" for b, _ in benches] or ["FPS (ours)"]
    w(f"| model | paper mAP | ours {HEADLINE} | ours {BESIDE} | ours AR100 | ours recall@.5 "
      f"| {' | '.join(fps_cols)} | params M (ours / paper) | GFLOPs (ours / paper) |")
    w("|---|---:|---:|---:|---:|---:|" + "---:|" * len(fps_cols) + "---:|---:|")
    for label, group, name in [*[(f"GFL-{t[4:].upper()}", f"teacher-{t}", t) for t in TEACHERS],
                               ("MedDet", "meddet", "meddet"),
                               ("MedDet-lite (ours)", "lite", "meddet_lite")]:
        per = [brow.get(name, {}) for _, brow in benches] or [{}]
        b = next((m for m in per if m), {})
        pp = paper.TABLE2.get(name, (None, None))
        fps = " | ".join(_num(m.get("fps"), 2) for m in per)
        w(f"| {label} | {p(name) or '—'} | {cell(rows, group, HEADLINE)} | "
          f"{cell(rows, group, BESIDE)} | {cell(rows, group, 'AR100')} | "
          f"{cell(rows, group, 'recall')} | {fps} | "
          f"{_num(b.get('params_m'), 2)} / {pp[0] or '—'} | "
          f"{_num(b.get('gflops'), 2)} / {pp[1] or '—'} |")
    line = teachers_line(rows, in_groups(rows, ["meddet", "lite"]))
    if line:
        w("\n" + line.rstrip("\n"))
    fps = paper.FPS
    for bench, brow in benches:
        ref = brow.get("gfl_r50", {}).get("fps")
        ratios = ", ".join(f"{n} {b['fps'] / ref:.2f}×" for n, b in brow.items()
                           if ref and n != "gfl_r50" and b.get("fps"))
        w(f"\nFPS {_bench_label(bench)}: `meddet bench` on {bench.get('device_name')}, "
          f"{bench.get('img_size')} px, batch {bench.get('batch_size')}, "
          f"{bench.get('threads')} threads, images per second from the median latency "
          f"(relative to GFL-R50: {ratios or '—'}).")
    if benches:
        w(f"The paper measured {fps['meddet']} vs {fps['gfl_r50']} FPS "
          f"({fps['meddet'] / fps['gfl_r50']:.1f}×) on its GPU.\n")
    w("recall@.5: share of all ground-truth boxes matched at IoU 0.5 among each image's top 100 "
      "detections (classes pooled); AR100: COCO's average recall over classes and IoU "
      "0.5:0.95.\n")


def _sweep(rows: dict[str, dict], spread: float | None, w) -> None:
    """The σ/τ sweep, best validation mAP50 first; the default σ, τ is the MedDet row of the
    sweep rows' seed."""
    sweep = [r for r in rows.values() if r["group"].startswith("sweep-")]
    if not sweep:
        return
    sweep += [r for r in rows.values() if r["group"] == "meddet"
              and r["seed"] == sweep[0]["seed"]]
    w(f"## σ / τ sweep (eq. 14), seed {sweep[0]['seed']}\n")
    if spread is not None:
        w(f"One seed per row: a difference counts only if it is larger than the MedDet "
          f"rows' seed-to-seed spread of test {HEADLINE} at the default σ, τ ({spread:.1f} "
          "points).\n")
    w(f"| σ | τ | 1 − σ − τ | best val mAP50 | test {HEADLINE} | test {BESIDE} |")
    w("|---:|---:|---:|---:|---:|---:|")
    for r in sorted(sweep, key=lambda r: -(r.get("best_val_mAP50") or 0)):
        sig, tau = (DEFAULT_SIGMA_TAU if r["group"] == "meddet" else
                    (float(r["group"].split("-")[1][5:]), float(r["group"].split("-")[2][3:])))
        w(f"| {sig} | {tau} | {1 - sig - tau:.1f} | {_pct(r.get('best_val_mAP50'))} | "
          f"{_pct(r['test'].get(HEADLINE))} | {_pct(r['test'].get(BESIDE))} |")
    w("")
    line = teachers_line(rows, sweep)
    if line:
        w(line)


# The README's summary of the study: one line per claim of the paper, rewritten by
# `meddet study report --readme` between these two lines.
README_START = "<!-- study summary: written by `meddet study report --readme`; do not edit -->"
README_END = "<!-- end of study summary -->"



def claim_kinds(rows: dict[str, dict]) -> dict[str, list[str]]:
    """Per claim of the paper ("1"–"6"), the verdict of each of its comparisons on
    :data:`HEADLINE` (:data:`~meddet.study.verdicts.KINDS`), as the report decides them.

    Claim 2 compares MedDet with each teacher (as accurate, within the spread or better:
    reproduced; less accurate beyond it: contradicted) and adds the cost against GFL-R50
    (fewer parameters and more frames per second in the first benchmark: reproduced).
    """
    spread, spreads = _spreads(rows)
    out = {}
    for k in ("1", "3", "4", "5"):
        out[k] = [verdict_kind(verdict(group_metric(rows, a, HEADLINE),
                                       group_metric(rows, b, HEADLINE),
                                       spreads[k].get(HEADLINE)))
                  for _, a, b in CLAIMS[k]]
    med = group_metric(rows, "meddet", HEADLINE)
    two = [_teacher_kind(med, group_metric(rows, f"teacher-{t}", HEADLINE), spread[HEADLINE])
           for t in TEACHERS]
    benches = [b for _, b in _benches(rows) if "meddet" in b and "gfl_r50" in b]
    if benches:
        m, r = benches[0]["meddet"], benches[0]["gfl_r50"]
        cheaper = m["params_m"] < r["params_m"] and m["fps"] > r["fps"]
        two.append("reproduced" if cheaper else "contradicted")
    else:
        two.append("not run")
    out["2"] = two
    out["6"] = [verdict_kind(noise_verdict(rows, a, b, HEADLINE)) for _, a, b in NOISE_PAIRS]
    return {k: out[k] for k in sorted(out)}


def readme_summary(rows: dict[str, dict]) -> str:
    """The README's table of the paper's six claims: the verdict on this benchmark with how
    its comparisons split (:func:`claim_kinds`); the figures stay in the report."""
    L = [f"| claim of the paper | verdict here (synthetic phantom, test {HEADLINE}) |",
         "|---|---|"]
    for k, kinds in claim_kinds(rows).items():
        kind, detail = claim_verdict(kinds)
        shown = f"**{kind}**" if kind in ("reproduced", "contradicted") else kind
        L.append(f"| {k}. {CLAIM_TEXT[k]} | {shown} ({detail}) |")
    return "\n".join(L) + "\n"


def update_readme(readme: Path, rows: dict[str, dict], check_only: bool = False) -> str:
    """Replace the summary block of ``readme`` (between :data:`README_START` and
    :data:`README_END`) with :func:`readme_summary` of ``rows``; written atomically
    (``check_only``: only check that the block is there, and return the new text).

    Raises:
        MedDetError: the file or its block is missing.
    """
    from meddet.errors import MedDetError

    readme = Path(readme)
    if not readme.is_file():
        raise MedDetError(f"--readme {readme}: no such file")
    text = readme.read_text()
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        raise MedDetError(f"{readme} has no study summary block: put the lines "
                          f"'{README_START}' and '{README_END}' where the table goes")
    new = text[:i + len(README_START)] + "\n" + readme_summary(rows) + text[j:]
    if not check_only:
        atomic_write_text(readme, new)
    return new
