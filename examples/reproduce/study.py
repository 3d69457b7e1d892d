"""Reproduction study: the paper's Tables I-V and its noise claim on the synthetic benchmark.

Every row of every table is one run directory under ``--out``: it is trained with the
``meddet`` CLI, evaluated on the test split with ``meddet eval``, and finished by a
``row.json`` holding the test metrics, the best validation mAP50 and the wall-clock cost.
A finished row is never re-run; an interrupted one resumes from its ``last.pt``. The report
(``--report``, default ``docs/results.md``) is rewritten from whatever rows exist, so it can be
made at any point (``--report-only``). The rows behind ``docs/results.md`` (their ``row.json``,
merged from every machine that ran them) are committed under ``docs/results/``:

    python examples/reproduce/study.py --out docs/results --report docs/results.md --report-only

    # the study as published in docs/results.md (one GPU, 12 rows at a time)
    python examples/reproduce/study.py --config cpu-small --device cuda --jobs 12
    # what would run, without running it
    python examples/reproduce/study.py --dry-run
    # a subset: the teachers and Table I only, seed 0
    python examples/reproduce/study.py --tables 1 --seeds 0

Rows and what they measure (``S`` = seed; teachers and single-seed rows use seed 0):

* ``teacher-gfl_r{50,101,152}``: ``meddet pretrain-teacher`` (Table II; the distillation
  teachers of every other row).
* ``plain-<zoo name>-sS``: Table I's plain detectors. ``alone-meddet-sS``: the MedDet student
  (nmODE² in the head) trained without teachers, the baseline of the MedDet row.
* ``mgd|ld|fgd-sS``: the KD baselines, GFL-MobileNetV2 student, the teacher with the best val
  mAP50 (``meddet distill --method ...``).
* ``meddet-sS``: MedDet (nmODE² head, LWFF, AATM). Table III's cumulative rows, all distilled
  from the three teachers: ``abl-base-sS`` (teachers summed, no AATM, no nmODE²: the paper's
  "KD" baseline), ``abl-nmode-sS`` (+ nmODE²), ``abl-lwff-sS`` (+ LWFF), then ``meddet-sS``.
* ``nmode-{backbone,fpn}``: the KD baseline with nmODE² elsewhere (Table IV; ``none`` and
  ``head`` are ``abl-base-s0`` and ``abl-nmode-s0``). ``fusion-{sum,concat}``: Table V
  (``lwff`` is ``meddet-s0``).
* ``lite-sS``: MedDet distillation into ``meddet_lite`` (issue 9's CPU student).
* ``sweep-sigmaA-tauB``: the σ/τ sweep behind the distillation defaults.
* ``bench``: ``meddet bench`` of the teachers and both students (Table II's cost columns).
* ``alone-lite-{head,none,fpn,backbone}-sS`` (table ``alone``, no teachers, CPU-feasible):
  ``meddet_lite`` trained alone with nmODE² in that place (``none``: nowhere), each with the
  noise sweep: a proxy for Table IV and the noise claim that a 2-core CPU can run.

The noise study re-evaluates some rows with ``--noise-sweep rician:40,20,10,5``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from meddet import paper as _paper

TEACHERS = ("gfl_r50", "gfl_r101", "gfl_r152")
PLAIN = ("gfl_mbv2", "gfl_mbv2_1.4", "gfl_effb0", "gfl_effb1", "gfl_shufflenet",
         "gfl_shufflenetv2")
KD = ("mgd", "ld", "fgd")
NOISE_SPEC = "rician:40,20,10,5"
NOISE_ROWS = ("teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152", "plain-gfl_mbv2-s0",
              "abl-base-s0", "abl-nmode-s0", "meddet-s0")
SWEEP = ((0.5, 0.3), (0.7, 0.2), (0.3, 0.5), (0.8, 0.1), (0.4, 0.2))
DEFAULT_SIGMA_TAU = (0.5, 0.3)
TABLES = ("1", "2", "3", "4", "5", "noise", "lite", "sweep", "alone")
# Table "alone" (CPU-feasible, no teachers): meddet_lite trained alone with nmODE² here, each
# row re-evaluated under noise. The proxy for Table IV and the noise claim when no GPU is lent.
PLACEMENTS = ("head", "none", "fpn", "backbone")

PAPER = _paper.MAP  # the paper's mAP (%) per group
# Each table's comparisons: (label, the group the paper says wins, the group it beats).
CLAIMS: dict[str, list[tuple[str, str, str]]] = {
    # "its student alone" isolates distillation: the same architecture without teachers
    "1": [(f"MedDet vs {name}", "meddet", g) for name, g in (
        ("GFL-MobileNetV2", "plain-gfl_mbv2"), ("its student alone", "alone-meddet"),
        ("MGD", "mgd"), ("LD", "ld"), ("FGD", "fgd"))],
    "3": [("nmODE² adds", "abl-nmode", "abl-base"), ("LWFF adds", "abl-lwff", "abl-nmode"),
          ("AATM adds", "meddet", "abl-lwff")],
    "4": [(f"head vs {q}", "abl-nmode", g) for q, g in (
        ("none", "abl-base"), ("backbone", "nmode-backbone"), ("fpn", "nmode-fpn"))],
    "5": [(f"LWFF vs {q}", "meddet", f"fusion-{q}") for q in ("sum", "concat")],
    "alone": [(f"head vs {q}", "alone-lite-head", f"alone-lite-{q}") for q in PLACEMENTS[1:]],
}
# Table III's cumulative rows and Table IV's placements: 3-teacher feature distillation
# without LWFF (teachers summed) and without AATM is the paper's "KD" baseline.
KD_BASE = ("--fusion", "sum", "--no-aatm")


@dataclass
class Row:
    """One run: a training command, then a test evaluation."""

    id: str
    label: str
    argv: list[str]                     # meddet CLI arguments, without --out/--device
    seed: int = 0
    needs: tuple[str, ...] = ()
    checkpoint: str = "best.pt"         # evaluated on the test split
    noise: bool = False
    group: str = ""                     # rows that differ only by seed share a group
    kind: str = "train"                 # train | bench


def plan(seeds: list[int], tables: set[str], teacher_epochs: int | None = None) -> list[Row]:
    """The rows ``tables`` need, most important first: teachers, then seed ``seeds[0]`` of
    every table, the single-seed rows, then the other seeds (a deadline cuts the tail)."""
    rows: dict[str, Row] = {}
    teachers = ",".join(f"@teacher-{t}" for t in TEACHERS)
    need_t = tuple(f"teacher-{t}" for t in TEACHERS)
    t = tables

    def add(rid: str, label: str, argv: list[str], seed: int = 0, **kw) -> None:
        kw.setdefault("group", rid.rsplit("-s", 1)[0] if f"-s{seed}" in rid else rid)
        kw.setdefault("noise", rid in NOISE_ROWS)
        rows.setdefault(rid, Row(rid, label, argv, seed=seed, **kw))

    def distill(rid, label, seed, *flags, student="meddet", method="meddet", **kw):
        add(rid, label, ["distill", "--teachers", teachers, "--student", student, "--method",
                         method, *flags, "--seed", str(seed)], seed, needs=need_t,
            checkpoint="student.pt", **kw)

    longer = ["--epochs", str(teacher_epochs)] if teacher_epochs else []
    for m in TEACHERS if t - {"alone"} else ():  # every other table needs the teachers
        # last.pt every 4 epochs: a ResNet teacher's full state is up to ~800 MB (R152 with
        # AdamW; 2.0 s to write on the development VM) and the R152 GPU run spent ~4 s per
        # epoch outside training, most of it this write. best.pt is still written at every best.
        add(f"teacher-{m}", f"GFL-{m[4:].upper()} (teacher)",
            ["pretrain-teacher", "--model", m, "--seed", "0", "--checkpoint-every", "4",
             *longer])

    def per_seed(s: int) -> None:
        for m in PLAIN if "1" in t else ("gfl_mbv2",) if t & {"noise"} else ():
            add(f"plain-{m}-s{s}", f"GFL {m[4:]}",
                ["pretrain-teacher", "--model", m, "--seed", str(s)], s)
        if "1" in t:
            # The MedDet student architecture (nmODE² head) trained without teachers.
            add(f"alone-meddet-s{s}", "MedDet student alone",
                ["pretrain-teacher", "--model", "meddet", "--seed", str(s)], s)
            for k in KD:
                distill(f"{k}-s{s}", k.upper(), s, student="gfl_mbv2", method=k)
        if t & {"1", "2", "3", "4", "5", "lite", "noise", "sweep"}:
            distill(f"meddet-s{s}", "MedDet", s)
        if t & {"3", "4", "noise"}:
            # every seed of this pair is swept: it is claim 6's distilled with/without pair
            distill(f"abl-base-s{s}", "KD baseline (sum, no AATM, no nmODE²)", s, *KD_BASE,
                    "--nmode", "none", noise=True)
            distill(f"abl-nmode-s{s}", "+ nmODE² (head)", s, *KD_BASE, noise=True)
        if "3" in t:
            distill(f"abl-lwff-s{s}", "+ nmODE² + LWFF", s, "--no-aatm")
        if "lite" in t:
            distill(f"lite-s{s}", "MedDet-lite", s, student="meddet_lite")
        if "alone" in t:
            for q in PLACEMENTS:
                add(f"alone-lite-{q}-s{s}", f"meddet_lite alone, nmODE² {_where(q)}",
                    ["pretrain-teacher", "--model", "meddet_lite", "--nmode", q, "--seed",
                     str(s)], s, noise=True)

    per_seed(seeds[0])
    s0 = seeds[0]
    if "4" in t:
        for q in ("backbone", "fpn"):
            distill(f"nmode-{q}", f"KD baseline + nmODE² in {q}", s0, *KD_BASE, "--nmode", q)
    if "5" in t:
        for f in ("sum", "concat"):
            distill(f"fusion-{f}", f"MedDet, fusion {f}", s0, "--fusion", f)
    if "sweep" in t:
        for sig, tau in SWEEP:
            if (sig, tau) != DEFAULT_SIGMA_TAU:
                distill(f"sweep-sigma{sig}-tau{tau}", f"σ={sig}, τ={tau}", s0, "--sigma",
                        str(sig), "--tau", str(tau))
    if "2" in t:
        add("bench", "meddet bench", [], kind="bench")
    for s in seeds[1:]:
        per_seed(s)
    return list(rows.values())


def _where(q: str) -> str:
    return {"none": "nowhere", "head": "in the head", "fpn": "in the FPN",
            "backbone": "in the backbone"}[q]


# --------------------------------------------------------------------------------------------
# running


def _meddet() -> list[str]:
    return [sys.executable, "-m", "meddet"]


def _resolve(argv: list[str], runs: Path) -> list[str]:
    """Replace ``@row-id`` teacher references by that row's best checkpoint."""
    out = []
    for a in argv:
        if "@" in a:
            a = ",".join(str(runs / p[1:] / "best.pt") if p.startswith("@") else p
                         for p in a.split(","))
        out.append(a)
    return out


def _best_val(run_dir: Path) -> float | None:
    path = run_dir / "results.csv"
    if not path.is_file():
        return None
    vals = []
    with path.open() as fh:
        for r in csv.DictReader(fh):
            v = r.get("val_mAP50") or r.get("mAP50")
            if v not in (None, ""):
                try:
                    vals.append(float(v))
                except ValueError:
                    pass
    return max(vals) if vals else None


def _atomic_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def resumed(info: dict, partial: Path) -> dict:
    """``info`` of a finished row, with the invocations a deadline cut before it (read from
    ``partial``) folded in: seconds are summed over all of them, the commands start with the
    one that began the row, and ``segments`` lists each invocation's seconds."""
    if not partial.is_file():
        return info
    segs = json.loads(partial.read_text())
    out = dict(info)
    out["segments"] = [s["seconds"] for s in segs] + [info["seconds"]]
    out["seconds"] = round(sum(out["segments"]), 1)
    out["commands"] = [s["command"] for s in segs] + list(info["commands"])
    return out


class Runner:
    """Runs rows as subprocesses, ``jobs`` at a time, in dependency order."""

    def __init__(self, args: argparse.Namespace, rows: list[Row]) -> None:
        self.a = args
        self.rows = {r.id: r for r in rows}
        self.order = [r.id for r in rows]
        self.runs = Path(args.out) / "runs"
        self.logs = Path(args.out) / "logs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.time() + args.deadline_min * 60 if args.deadline_min else None
        self.running: dict[str, tuple[subprocess.Popen, float, list[list[str]], object]] = {}
        self.failed: set[str] = set()

    def done(self, rid: str) -> bool:
        return (self.runs / rid / "row.json").is_file()

    def steps(self, row: Row) -> list[list[str]]:
        run = self.runs / row.id
        dev = ["--device", self.a.device]
        if row.kind == "bench":
            return [[*_meddet(), "bench", "--models", ",".join([*TEACHERS, "meddet",
                                                                  "meddet_lite"]),
                     "--img-size", str(self.a.bench_img_size), "--threads",
                     str(self.a.bench_threads), "--iters", str(self.a.bench_iters), *dev,
                     "--json", str(run / "bench.json")]]
        common = ["--data", str(self.a.data), "--config", self.a.config, *self.a.extra]
        if (run / "last.pt").is_file():
            train = [*_meddet(), row.argv[0], "--resume", str(run)]
        else:
            # The row's own flags come last so that they win over --extra (e.g. --epochs).
            argv = _resolve(row.argv, self.runs)
            train = [*_meddet(), argv[0], *common, *argv[1:], "--out", str(run), *dev]
        ev = [*_meddet(), "eval", str(run / row.checkpoint), "--data", str(self.a.data),
              "--split", "test", "--out", str(run / "eval"), "--json", str(run / "test.json"),
              *dev]
        if row.noise:
            ev += ["--noise-sweep", NOISE_SPEC]
        return [train, ev]

    def launch(self, rid: str) -> None:
        row = self.rows[rid]
        (self.runs / rid).mkdir(parents=True, exist_ok=True)
        steps = self.steps(row)
        log = (self.logs / f"{rid}.log").open("a")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.a.threads_per_job),
                   PYTHONUNBUFFERED="1")
        cmd = " && ".join(subprocess.list2cmdline(s) for s in steps)
        log.write(f"$ {cmd}\n")
        log.flush()
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        self.running[rid] = (proc, time.time(), steps, log)
        print(f"[{_now()}] start  {rid}", flush=True)

    def _cmds(self, steps: list[list[str]]) -> list[str]:
        return [" ".join(s[2:]).replace(str(self.runs.parent), "OUT") for s in steps]

    def stop(self, rid: str) -> None:
        """Ends a row at the deadline and adds what it ran, and for how long, to its
        ``partial.json``: a row finished across several invocations reports them all."""
        proc, t0, steps, log = self.running.pop(rid)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        log.close()
        path = self.runs / rid / "partial.json"
        segs = json.loads(path.read_text()) if path.is_file() else []
        segs.append({"seconds": round(time.time() - t0, 1), "command": self._cmds(steps)[0],
                     "device": self.a.device})
        _atomic_json(path, segs)
        print(f"[{_now()}] STOP   {rid} (deadline; resumes next time)", flush=True)

    def finish(self, rid: str, rc: int) -> None:
        proc, t0, steps, log = self.running.pop(rid)
        log.close()
        row = self.rows[rid]
        secs = time.time() - t0
        if rc != 0:
            self.failed.add(rid)
            print(f"[{_now()}] FAIL   {rid} (exit {rc}, {secs:.0f}s; see logs/{rid}.log)",
                  flush=True)
            return
        run = self.runs / rid
        info = resumed({"id": rid, "label": row.label, "seed": row.seed, "group": row.group,
                        "seconds": round(secs, 1), "commands": self._cmds(steps),
                        "device": self.a.device, "config": self.a.config},
                       run / "partial.json")
        if row.kind == "bench":
            info["bench"] = json.loads((run / "bench.json").read_text())
        else:
            info["test"] = json.loads((run / "test.json").read_text())
            info["best_val_mAP50"] = _best_val(run)
            taught = {n: self.runs / n / "row.json" for n in row.needs if n.startswith("teacher-")}
            if taught:  # teachers are retrained on every fresh machine: say which ones taught
                info["teachers"] = {n: json.loads(p.read_text())["test"]["mAP50"]
                                    for n, p in taught.items()}
        _atomic_json(run / "row.json", info)
        print(f"[{_now()}] done   {rid} ({secs:.0f}s)", flush=True)

    def run(self) -> int:
        pending = [r for r in self.order if not self.done(r)]
        while pending or self.running:
            for rid, (proc, *_rest) in list(self.running.items()):
                rc = proc.poll()
                if rc is not None:
                    self.finish(rid, rc)
            if self.deadline and time.time() > self.deadline:
                for rid in list(self.running):
                    self.stop(rid)
                break
            blocked = {r for r in pending if any(n in self.failed for n in self.rows[r].needs)}
            for r in blocked:
                print(f"[{_now()}] skip   {r} (a row it needs failed)", flush=True)
                self.failed.add(r)
            pending = [r for r in pending if r not in blocked]
            for rid in list(pending):
                if len(self.running) >= self.a.jobs:
                    break
                if all(self.done(n) for n in self.rows[rid].needs):
                    pending.remove(rid)
                    self.launch(rid)
            if not self.running and pending:
                print("nothing can start: " + ", ".join(pending), flush=True)
                break
            time.sleep(1.0)
        write_report(Path(self.a.out), Path(self.a.report), self.a, self.order)
        return 1 if self.failed else 0


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


# --------------------------------------------------------------------------------------------
# aggregation and the report


def load_rows(out: Path) -> dict[str, dict]:
    rows = {}
    for p in sorted((out / "runs").glob("*/row.json")):
        info = json.loads(p.read_text())
        rows[info["id"]] = info
    return rows


def stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    if not values:
        return math.nan, math.nan, 0
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd, len(values)


def group_metric(rows: dict[str, dict], group: str, key: str = "mAP50",
                 cls: str | None = None) -> tuple[float, float, int]:
    vals = []
    for r in rows.values():
        if r["group"] == group and "test" in r:
            m = r["test"]["per_class"][cls] if cls else r["test"]
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


def fmt(ms: tuple[float, float, int]) -> str:
    m, sd, n = ms
    if n == 0:
        return "not run"
    return f"{m:.1f} ± {sd:.1f} (n={n})" if n > 1 else f"{m:.1f} (n=1)"


def verdict(a: tuple[float, float, int], b: tuple[float, float, int],
            spread: float | None = None) -> str:
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


def lite_verdict(med: tuple[float, float, int], lite: tuple[float, float, int],
                 diffs: dict[int, float], margin: float = 1.0) -> str:
    """Issue 9's bar: MedDet-lite at most ``margin`` points below MedDet (same schedule)."""
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


def write_report(out: Path, report: Path, a: argparse.Namespace | None = None,
                 planned: list[str] | None = None) -> str:
    rows = load_rows(out)
    meta = _meta(out, a)
    text = render(rows, meta, planned, source=(out, report))
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, report)
    _noise_plot(rows, report.parent / "img" / "results_noise.png")
    _noise_plot_alone(rows, report.parent / "img" / "results_noise_alone.png")
    return text


def _meta(out: Path, a: argparse.Namespace | None) -> dict:
    path = out / "study.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    if a is not None and not getattr(a, "report_only", False):
        import torch
        calls = meta.get("invocations", [])
        name = (torch.cuda.get_device_name(0) if a.device.startswith("cuda")
                else platform.processor() or platform.machine())
        calls.append({"command": " ".join(sys.argv), "jobs": a.jobs, "device_name": name,
                      "finished": datetime.now(timezone.utc).isoformat(timespec="minutes")})
        meta = {"config": a.config, "data": str(a.data), "device": a.device,
                "device_name": name,
                "cpus": os.cpu_count(), "torch": torch.__version__,
                "python": platform.python_version(), "seeds": a.seeds, "extra": a.extra,
                "teacher_epochs": a.teacher_epochs, "invocations": calls}
        _atomic_json(path, meta)
    return meta


def _taught_apart(rows: dict[str, dict], a: str, b: str) -> bool:
    """Whether two groups' rows were distilled from different sets of teachers."""
    sets = [{json.dumps(r["teachers"], sort_keys=True) for r in rows.values()
             if r.get("group") == g and "teachers" in r} for g in (a, b)]
    return all(sets) and sets[0] != sets[1]


def teacher_sets(rows: dict[str, dict]) -> list[str]:
    """One line per set of teachers that taught distilled rows (teachers are retrained, same
    recipe and seed, on every fresh machine, so rows of one table may have different ones)."""
    sets: dict[tuple, list[str]] = {}
    for rid, r in sorted(rows.items()):
        if "teachers" in r:
            key = tuple(round(100 * r["teachers"].get(f"teacher-{t}", math.nan), 1)
                        for t in TEACHERS)
            sets.setdefault(key, []).append(rid)
    if not sets:
        return []
    out = [f"* teachers: retrained on every fresh machine (same recipe and seed); "
           f"{len(sets)} set(s) taught the distilled rows (test mAP50 of "
           f"{' / '.join(t.replace('gfl_', 'GFL-').upper() for t in TEACHERS)}):"]
    for key, ids in sets.items():
        out.append(f"  * {' / '.join(f'{v:.1f}' for v in key)}: {', '.join(ids)}")
    return out


def render(rows: dict[str, dict], meta: dict, planned: list[str] | None = None,
           source: tuple[Path, Path] | None = None) -> str:
    """The report. ``source``: the study folder and report path it is written from and to,
    named in the report so that a reader can rebuild it from the rows alone."""
    from meddet.benchmark import TABLE2_PAPER

    L: list[str] = []
    w = L.append
    med = group_metric(rows, "meddet")
    spread = med[1] if med[2] > 1 else None
    nm = group_metric(rows, "abl-nmode")
    # the spread a single-seed row is judged by: its own table's multi-seed row
    spreads = {"1": spread, "3": spread, "4": nm[1] if nm[2] > 1 else spread, "5": spread,
               "alone": None}
    verdicts = {k: "; ".join(
        f"{label}: {verdict(group_metric(rows, a_), group_metric(rows, b_), spreads[k])}"
        + (" [different teacher sets]" if _taught_apart(rows, a_, b_) else "")
        for label, a_, b_ in pairs) for k, pairs in CLAIMS.items()}
    w("# Reproduction study: Tables I–V and the noise claim on the synthetic benchmark\n")
    w("Generated by `examples/reproduce/study.py` from the run directories it trained; every "
      "figure below is a measurement. Ours: **test mAP50 in %** on the synthetic CDH test "
      "split (pycocotools), mean ± sample standard deviation over seeds (n = seeds). The "
      "paper's figures are on the private CDH-1848 set and are shown for orientation only: "
      "the two columns are not comparable in absolute terms, only in their ordering. What the "
      "numbers mean, what is missing and why: `docs/distillation.md`, section *Study status*."
      "\n")
    if source:
        out, report = source
        w(f"Records: every row's measurements are in `{out}/runs/<row>/row.json` and the "
          f"commands in `{out}/study.json`; `python examples/reproduce/study.py --out {out} "
          f"--report {report} --report-only` rewrites this file and its plots from them alone."
          "\n")
    if meta:
        calls = meta.get("invocations") or [meta]  # older study.json: one call, flat
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
        w("* wall-clock per row: training + test evaluation of one run, measured with the "
          "rows of one command sharing the machine (so it overstates a run alone); where a "
          "table's seeds ran on different devices, the mean per device.")
        w("* seeds of one row may come from different devices (the Rows table says which): "
          "same data, config, seed and code, but not the same arithmetic, so they are "
          "independent samples of the same training recipe rather than repeats.")
        for line in teacher_sets(rows):
            w(line)
        w("")

    _summary(rows, verdicts, spread, w)

    def table(title: str, items: list[tuple[str, str, str | None]], note: str = "",
              min_seeds: int = 0) -> None:
        """``min_seeds``: the issue's seed count for this table; rows that ran but have fewer
        are named under the table."""
        w(f"## {title}\n")
        if note:
            w(note + "\n")
        w("| row | paper mAP | ours mAP50 | ours mAP (0.5:0.95) | protrusion AP50 | "
          "wall-clock per run |")
        w("|---|---:|---:|---:|---:|---:|")
        for label, group, paper in items:
            w(f"| {label} | {paper or '—'} | {fmt(group_metric(rows, group))} | "
              f"{fmt(group_metric(rows, group, 'mAP'))} | "
              f"{fmt(group_metric(rows, group, 'mAP50', 'protrusion'))} | "
              f"{_secs(group_seconds(rows, group))} |")
        w("")
        short = [(label.strip("*"), n) for label, group, _ in items
                 if 0 < (n := group_metric(rows, group)[2]) < min_seeds]
        if short:
            w(f"Fewer than the {min_seeds} seeds planned for this table, so far: "
              + ", ".join(f"{label} (n={n})" for label, n in short)
              + "; their other seeds are among the rows not run yet (above), and a verdict "
              "involving them says so.\n")

    def regen(tables: str, device: str = "cuda", extra: str = "") -> None:
        """The command that (re)runs the rows of ``tables`` and rewrites this file."""
        te = meta.get("teacher_epochs") if tables != "alone" else None
        w(f"Regenerate: `python examples/reproduce/study.py --config "
          f"{meta.get('config') or 'cpu-small'} --tables {tables} --seeds 0,1,2 --device "
          f"{device}{f' --teacher-epochs {te}' if te else ''}{extra}` (finished rows are kept; "
          "`--report-only` rewrites this file from them alone).\n")

    p = PAPER.get
    table("Table I: lightweight detectors and distillation methods",
          [*[(f"GFL {m[4:]}", f"plain-{m}", p(m)) for m in PLAIN],
           ("MedDet student alone (nmODE² head, no teachers)", "alone-meddet", None),
           *[(k.upper() + " (GFL-MobileNetV2 student, best teacher)", k, p(k)) for k in KD],
           ("**MedDet** (3 teachers)", "meddet", p("meddet"))], min_seeds=3)
    def claims(key: str) -> None:
        w(f"Claims: {verdicts[key]}.\n")

    claims("1")
    regen("1")

    w("## Table II: teachers and student, accuracy and cost\n")
    bench, brow = _bench(rows)
    w("| model | paper mAP | ours mAP50 | ours recall | FPS (ours) | params M (ours / paper) "
      "| GFLOPs (ours / paper) |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for label, group, name in [*[(f"GFL-{t[4:].upper()}", f"teacher-{t}", t) for t in TEACHERS],
                               ("MedDet", "meddet", "meddet"),
                               ("MedDet-lite (ours)", "lite", "meddet_lite")]:
        b = brow.get(name, {})
        pp = TABLE2_PAPER.get(name, (None, None))
        w(f"| {label} | {p(name) or '—'} | {fmt(group_metric(rows, group))} | "
          f"{fmt(group_metric(rows, group, 'recall'))} | {_num(b.get('fps'), 2)} | "
          f"{_num(b.get('params_m'), 2)} / {pp[0] or '—'} | "
          f"{_num(b.get('gflops'), 2)} / {pp[1] or '—'} |")
    if bench:
        ref = brow.get("gfl_r50", {}).get("fps")
        ratios = ", ".join(f"{n} {b['fps'] / ref:.2f}×" for n, b in brow.items()
                           if ref and n != "gfl_r50")
        w(f"\nCost columns: `meddet bench` in the same study run on {bench.get('device_name')}, "
          f"{bench.get('img_size')} px, batch {bench.get('batch_size')}, "
          f"{bench.get('threads')} threads (FPS relative to GFL-R50: {ratios}). The paper "
          "measured 19.8 vs 3.9 FPS (5.1×) on its GPU.\n")
    w("")
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

    _noise_table(rows, w)
    regen("noise")

    table("Table IV, CPU proxy: nmODE² placement in `meddet_lite` trained alone (no teachers)",
          [(f"nmODE² {_where(q)}", f"alone-lite-{q}", p(f"nmode_{q}")) for q in PLACEMENTS],
          "No teachers, so this answers a narrower question than Table IV: where nmODE² helps "
          "the small student trained on its own. The paper's column is its Table IV (distilled "
          "student), for orientation. Each row also ran the noise sweep (next section).")
    claims("alone")
    regen("alone", "cpu", " --jobs 2 --threads-per-job 1")
    _noise_alone(rows, w)

    lite = group_metric(rows, "lite")
    if lite[2]:
        w("## MedDet-lite (issue 9): accuracy next to the paper-architecture student\n")
        w(lite_verdict(med, lite, paired(rows, "lite", "meddet")))

    sweep = [r for r in rows.values() if r["group"].startswith("sweep-")]
    if sweep:
        # the default σ, τ is the MedDet row of the sweep rows' seed
        sweep += [r for r in rows.values() if r["group"] == "meddet"
                  and r["seed"] == sweep[0]["seed"]]
        w(f"## σ / τ sweep (eq. 14), seed {sweep[0]['seed']}\n")
        if spread is not None:
            w(f"One seed per row: a difference counts only if it is larger than the MedDet "
              f"rows' seed-to-seed spread at the default σ, τ ({spread:.1f} points).\n")
        w("| σ | τ | 1 − σ − τ | best val mAP50 | test mAP50 |")
        w("|---:|---:|---:|---:|---:|")
        for r in sorted(sweep, key=lambda r: -(r.get("best_val_mAP50") or 0)):
            sig, tau = (DEFAULT_SIGMA_TAU if r["group"] == "meddet" else
                        (float(r["group"].split("-")[1][5:]), float(r["group"].split("-")[2][3:])))
            w(f"| {sig} | {tau} | {1 - sig - tau:.1f} | {_pct(r.get('best_val_mAP50'))} | "
              f"{100 * r['test']['mAP50']:.1f} |")
        w("")

    w("## Rows\n")
    w("| row | device | seconds | command |")
    w("|---|---|---:|---|")
    for r in sorted(rows.values(), key=lambda r: r["id"]):
        w(f"| {r['id']} | {r.get('device', '?')} | {r['seconds']:.0f} | "
          f"`{' && '.join(r['commands'])}` |")
    w("")
    return "\n".join(L)


def _noise_levels(r: dict) -> list[tuple[str, float]]:
    return [(x["noise"] or "clean", 100 * x["mAP50"]) for x in r["test"].get("noise_sweep", [])]


def _noise_head(w, title: str, first: str, have: list[dict]) -> list[str]:
    """The section title and the table header over the levels ``have`` swept ([]: not run)."""
    w(f"## {title}\n")
    if not have:
        w("not run\n")
        return []
    levels = list(dict.fromkeys(n for r in have for n, _ in _noise_levels(r)))
    w(f"| {first} | " + " | ".join(levels) + " | drop clean → lowest SNR |")
    w("|---|" + "---:|" * (len(levels) + 1))
    return levels


def _noise_table(rows: dict[str, dict], w) -> None:
    have = _noise_rows(rows)
    levels = _noise_head(w, "Noise robustness: test mAP50 against Rician SNR", "model", have)
    if not levels:
        return
    for r in have:
        got = dict(_noise_levels(r))
        vals = [got.get(n) for n in levels]
        drop = (f"{vals[0] - vals[-1]:.1f}" if vals[0] is not None and vals[-1] is not None
                else "—")
        w(f"| {r['label']} (`{r['id']}`) | "
          + " | ".join("—" if v is None else f"{v:.1f}" for v in vals) + f" | {drop} |")
    w("\nOne seed per row; the noise is drawn reproducibly per image (`meddet eval "
      "--noise-sweep`). Plot: `docs/img/results_noise.png`. nmODE²'s robustness claim holds "
      "here only if the rows with nmODE² lose clearly less than their twins without it: "
      f"`abl-nmode` vs `abl-base`, every seed swept: {noise_verdict(rows, 'abl-nmode', 'abl-base')}."
      "\n")


def _bench(rows: dict[str, dict]) -> tuple[dict | None, dict[str, dict]]:
    """The study's ``meddet bench`` result and its eager-PyTorch rows by model name."""
    bench = next((r["bench"] for r in rows.values() if "bench" in r), None)
    return bench, {b["name"]: b for b in (bench or {}).get("models", [])
                   if b.get("runtime", "torch") == "torch"}


def _level_stats(rs: list[dict], levels: list[str]) -> list[tuple[float, float, int]]:
    """Mean, sample sd and count over the runs ``rs`` at each noise level."""
    return [stats([v for r in rs for n_, v in _noise_levels(r) if n_ == n]) for n in levels]


def _drops(rows: dict[str, dict], group: str) -> dict[int, float]:
    """Per seed of ``group``: test mAP50 (%) clean minus at the sweep's last (noisiest) level."""
    out = {}
    for r in rows.values():
        lv = _noise_levels(r) if r["group"] == group and "test" in r else []
        if len(lv) > 1:
            out[r["seed"]] = lv[0][1] - lv[-1][1]
    return out


def _alone_noise(rows: dict[str, dict]) -> list[tuple[str, list[dict]]]:
    """(placement, its rows with a noise sweep) for the ``alone`` table, placements that ran."""
    have = [(q, [r for r in rows.values() if r["group"] == f"alone-lite-{q}"
                 and r.get("test", {}).get("noise_sweep")]) for q in PLACEMENTS]
    return [(q, rs) for q, rs in have if rs]


def _noise_alone(rows: dict[str, dict], w) -> None:
    have = _alone_noise(rows)
    levels = _noise_head(w, "Noise robustness with and without nmODE² (`meddet_lite` trained "
                         "alone, CPU proxy)", "nmODE²", [r for _, rs in have for r in rs])
    if not levels:
        return
    for q, rs in have:
        cells = [fmt(m) for m in _level_stats(rs, levels)]
        drop = fmt(stats(list(_drops(rows, f"alone-lite-{q}").values())))
        w(f"| {_where(q)} (`alone-lite-{q}`) | " + " | ".join(cells) + f" | {drop} |")
    v = noise_verdict(rows, "alone-lite-head", "alone-lite-none")
    w("\nClaim (nmODE² in the head loses less accuracy to noise than no nmODE², difference "
      f"of the mean drops): {v}. The noise is drawn reproducibly per image; plot: "
      "`docs/img/results_noise_alone.png`.\n")


def noise_verdict(rows: dict[str, dict], with_g: str, without_g: str) -> str:
    """Does ``with_g`` (nmODE²) lose less from clean to the noisiest level than ``without_g``?
    The verdict of the mean drops (without − with), then the paired per-seed differences."""
    with_, without = _drops(rows, with_g), _drops(rows, without_g)
    if not (with_ and without):
        return "not run"
    per = {s: with_[s] - without[s] for s in sorted(with_.keys() & without.keys())}
    v = verdict(stats(list(without.values())), stats(list(with_.values())))
    return v + ("; per seed, drop with − drop without: "
                + ", ".join(f"s{s} {d:+.1f}" for s, d in per.items()) if per else "")


def _summary(rows: dict[str, dict], verdicts: dict[str, str], spread: float | None,
             w) -> None:
    """The six claims, each with the verdicts of the tables below, in one place."""
    med = group_metric(rows, "meddet")
    cost = []
    for t in TEACHERS:
        m = group_metric(rows, f"teacher-{t}")
        if med[2] and m[2]:
            sp = max([x[1] for x in (med, m) if x[2] > 1], default=spread)
            d = med[0] - m[0]
            if sp is None:
                word = "one seed each, spread unknown"
            elif abs(d) <= sp:
                word = f"within the spread {sp:.1f}: as accurate, as far as these seeds tell"
            else:
                word = f"beyond the spread {sp:.1f}: **{'less' if d < 0 else 'more'} accurate**"
            cost.append(f"MedDet − GFL-{t[4:].upper()} {d:+.1f} ({word})")
    bench, b = _bench(rows)
    if "meddet" in b and "gfl_r50" in b:
        cost.append(f"cost against GFL-R50: {b['meddet']['params_m'] / b['gfl_r50']['params_m']:.0%} "
                    f"of its parameters, {b['meddet']['gflops'] / b['gfl_r50']['gflops']:.0%} of "
                    f"its GFLOPs, {b['meddet']['fps'] / b['gfl_r50']['fps']:.2f}× its FPS on "
                    f"{bench.get('device_name')} (on a CPU: `docs/performance.md`)")
    w("## The paper's claims on this benchmark, in one place\n")
    w("**reproduced**: the difference has the paper's sign and exceeds the seed-to-seed spread; "
      "**contradicted**: it exceeds the spread with the opposite sign; not resolved: it is "
      "within the spread; not run: a row is missing; [different teacher sets]: the two "
      "sides were distilled from teachers retrained on different machines (listed above), so the "
      "difference mixes the method with its teachers. Details under each table.\n")
    w("| claim (paper) | the paper's setting: distilled student | proxy: `meddet_lite` "
      "trained alone (CPU) |")
    w("|---|---|---|")
    w(f"| 1. MedDet beats the plain student and MGD, LD, FGD (Table I) | {verdicts['1']} | — |")
    w(f"| 2. MedDet about as accurate as its teachers at a fraction of the cost (Table II) | "
      f"{'; '.join(cost) or 'not run'} | — |")
    w(f"| 3. nmODE², LWFF and AATM each add accuracy (Table III) | {verdicts['3']} | — |")
    w(f"| 4. nmODE² helps in the head, not in the backbone or FPN (Table IV) | {verdicts['4']} "
      f"| {verdicts['alone']} |")
    w(f"| 5. LWFF beats sum and concatenation (Table V) | {verdicts['5']} | — |")
    w("| 6. nmODE² makes the detector more robust to MRI noise (clean → lowest SNR, with vs "
      f"without) | {noise_verdict(rows, 'abl-nmode', 'abl-base')} | "
      f"{noise_verdict(rows, 'alone-lite-head', 'alone-lite-none')} |")
    w("")


def _noise_rows(rows: dict[str, dict]) -> list[dict]:
    return [rows[i] for i in NOISE_ROWS
            if i in rows and rows[i].get("test", {}).get("noise_sweep")]


def _noise_plot(rows: dict[str, dict], path: Path) -> None:
    """One line per noise row (one seed each)."""
    _plot([(r["id"], _noise_levels(r), None) for r in _noise_rows(rows)],
          "Rician noise at evaluation", "test mAP50 (%)", path)


def _noise_plot_alone(rows: dict[str, dict], path: Path) -> None:
    """Mean ± sample sd over seeds of each placement of the ``alone`` table, by noise level."""
    series = []
    for q, rs in _alone_noise(rows):
        levels = [n for n, _ in _noise_levels(rs[0])]
        ms = _level_stats(rs, levels)
        series.append((f"nmODE² {_where(q)} (n={ms[0][2]})",
                       [(n, m) for n, (m, _, _) in zip(levels, ms)], [sd for _, sd, _ in ms]))
    _plot(series, "meddet_lite trained alone: Rician noise at evaluation",
          "test mAP50 (%), mean ± sd over seeds", path)


def _plot(series: list[tuple[str, list[tuple[str, float]], list[float] | None]], title: str,
          ylabel: str, path: Path) -> None:
    """``series``: (label, [(noise level, value)], error bars or None); nothing if empty."""
    if not series:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, lv, err in series:
        ax.errorbar(range(len(lv)), [v for _, v in lv], yerr=err, marker="o", capsize=3,
                    label=label)
        ax.set_xticks(range(len(lv)), [n.replace("rician:", "SNR ") for n, _ in lv])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _secs(by_device: dict[str, float]) -> str:
    if len(by_device) == 1:
        return f"{next(iter(by_device.values())):.0f} s"
    return " / ".join(f"{v:.0f} s ({d})" for d, v in by_device.items()) or "—"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, nd: int) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/study", help="study folder (run dirs, logs)")
    ap.add_argument("--data", default=None, help="dataset (default: OUT/data, generated by "
                    "`meddet data synth --seed 0` if missing)")
    ap.add_argument("--config", default="cpu-small")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tables", default="all", help=f"comma list of {','.join(TABLES)} or all")
    ap.add_argument("--jobs", type=int, default=1, help="rows run at a time")
    ap.add_argument("--threads-per-job", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="stop (resumably) after this many minutes")
    ap.add_argument("--report", default="docs/results.md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--only", default=None, help="comma list of row ids to run (their "
                    "dependencies must be finished already)")
    ap.add_argument("--teacher-epochs", type=int, default=None,
                    help="train the teachers this many epochs (default: the config's); "
                    "from-scratch ResNets need more than cpu-small's 20 to beat the student")
    ap.add_argument("--bench-img-size", type=int, default=512)
    ap.add_argument("--bench-threads", type=int, default=2)
    ap.add_argument("--bench-iters", type=int, default=10)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="further flags for every training command, e.g. --max-iters 2; "
                    "must come last (it takes the rest of the line)")
    a = ap.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.tables = set(TABLES) if a.tables == "all" else set(a.tables.split(","))
    unknown = a.tables - set(TABLES)
    if unknown:
        ap.error(f"unknown table(s) {sorted(unknown)}; use {','.join(TABLES)} or all")
    a.data = Path(a.data) if a.data else Path(a.out) / "data"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    rows = plan(a.seeds, a.tables, a.teacher_epochs)
    if a.only:
        keep = set(a.only.split(","))
        unknown = keep - {r.id for r in rows}
        if unknown:
            print(f"--only: no such row(s) {sorted(unknown)} in this plan", file=sys.stderr)
            return 2
        rows = [r for r in rows if r.id in keep]
    if a.dry_run:
        for r in rows:
            print(f"{r.id:28s} needs={','.join(r.needs) or '-':40s} meddet {' '.join(r.argv)}")
        return 0
    if a.report_only:
        write_report(Path(a.out), Path(a.report), a, [r.id for r in rows])
        return 0
    if not (a.data / "annotations").is_dir():
        subprocess.run([*_meddet(), "data", "synth", str(a.data), "--seed", "0"], check=True)
    return Runner(a, rows).run()


if __name__ == "__main__":
    sys.exit(main())
