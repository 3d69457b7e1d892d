"""The study's tables and the rows that fill them: what each row trains, and in which order.

A row is one run directory: a ``meddet`` training command, then a test evaluation. Rows that
differ only by seed share a *group*, the unit the report averages over. Row ids:

* ``teacher-gfl_r{50,101,152}``: ``meddet pretrain-teacher`` (Table II; the distillation
  teachers of every other row).
* ``plain-<zoo name>-sS``: Table I's plain detectors. ``alone-meddet-sS``: the MedDet student
  (nmODE² in the head) trained without teachers, the baseline of the MedDet row. Every seed of
  ``alone-meddet`` and ``plain-gfl_mbv2`` is swept under noise: the noise claim's pair of
  students trained alone (:data:`NOISE_PAIRS`).
* ``mgd|ld|fgd-sS``: the KD baselines, GFL-MobileNetV2 student, the teacher with the best val
  mAP50 (``meddet distill --method ...``).
* ``meddet-sS``: MedDet (nmODE² head, LWFF, AATM). Table III's cumulative rows, all distilled
  from the three teachers: ``abl-base-sS`` (teachers summed, no AATM, no nmODE²: the paper's
  "KD" baseline), ``abl-nmode-sS`` (+ nmODE²), ``abl-lwff-sS`` (+ LWFF), then ``meddet-sS``.
* ``nmode-{backbone,fpn}``: the KD baseline with nmODE² elsewhere (Table IV; ``none`` and
  ``head`` are ``abl-base-s0`` and ``abl-nmode-s0``). ``fusion-{sum,concat}``: Table V
  (``lwff`` is ``meddet-s0``).
* ``lite-sS``: MedDet distillation into ``meddet_lite``, the CPU student.
* ``sweep-sigmaA-tauB``: the σ/τ sweep behind the distillation defaults.
* ``bench-cpu``, ``bench-cuda-b1``, ``bench-cuda-b32``: ``meddet bench`` of the teachers and
  both students on the CPU (batch 1) and on the GPU (batch 1 and 32): Table II's cost columns,
  side by side. (The first study's single ``bench`` row, on its GPU, is read the same way.)
* ``alone-lite-{head,none,fpn,backbone}-sS`` (table ``alone``, no teachers, CPU-feasible):
  ``meddet_lite`` trained alone with nmODE² in that place (``none``: nowhere), each with the
  noise sweep: a proxy for Table IV and the noise claim that a 2-core CPU can run.
* ``imagenet-plain-gfl_mbv2-sS`` and ``imagenet-meddet-sS`` (table ``imagenet``, optional: not
  in ``all``): ``plain-gfl_mbv2-sS`` and ``meddet-sS`` with the student's backbone initialised
  from torchvision's ImageNet weights (``model.pretrained: imagenet``, passed as a per-row
  config, :attr:`Row.overrides`), distilled from the same teachers; the table also runs their
  from-scratch twins. Without the weights (offline, not cached) these rows fail when they run,
  with the library's one-line error.

``S`` is the seed; teachers and single-seed rows use the first seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from meddet.errors import MedDetError

TEACHERS = ("gfl_r50", "gfl_r101", "gfl_r152")
PLAIN = ("gfl_mbv2", "gfl_mbv2_1.4", "gfl_effb0", "gfl_effb1", "gfl_shufflenet",
         "gfl_shufflenetv2")
KD = ("mgd", "ld", "fgd")
NOISE_SPEC = "rician:40,20,10,5"
NOISE_ROWS = ("teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152", "plain-gfl_mbv2-s0",
              "alone-meddet-s0", "abl-base-s0", "abl-nmode-s0", "meddet-s0")
SWEEP = ((0.5, 0.3), (0.7, 0.2), (0.3, 0.5), (0.8, 0.1), (0.4, 0.2))
DEFAULT_SIGMA_TAU = (0.5, 0.3)
TABLES = ("1", "2", "3", "4", "5", "noise", "lite", "sweep", "alone")
# Tables that run only when named: ``all`` means :data:`TABLES`. ``imagenet`` needs torchvision's
# MobileNetV2 weights (a download or the cache), which an offline machine may not have.
OPTIONAL_TABLES = ("imagenet",)
# The config overrides of the ImageNet-initialised rows (``model.pretrained``).
IMAGENET = {"model": {"pretrained": "imagenet"}}
# Table "alone" (CPU-feasible, no teachers): meddet_lite trained alone with nmODE² here, each
# row re-evaluated under noise. The proxy for Table IV and the noise claim without a GPU.
PLACEMENTS = ("head", "none", "fpn", "backbone")
DEFAULT_SEEDS = "0,1,2"
# Table II's cost rows: (row id, device, batch). The CPU row runs wherever the study runs (on a
# CPU study, the machine the claims are about); the CUDA rows only in a study run with
# --device cuda (a CPU study skips them, it does not fail them).
BENCHES = (("bench-cpu", "cpu", 1), ("bench-cuda-b1", "cuda", 1), ("bench-cuda-b32", "cuda", 32))

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
    # not a claim of the paper (its detectors start from ImageNet): what pretraining buys
    "imagenet": [("ImageNet vs scratch, GFL-MobileNetV2", "imagenet-plain-gfl_mbv2",
                  "plain-gfl_mbv2"), ("ImageNet vs scratch, MedDet", "imagenet-meddet",
                                      "meddet")],
}
# The noise claim's comparisons: (label, the group with nmODE², its twin without). The distilled
# pair is the paper's setting; the students trained alone differ only in nmODE² in the head
# (``meddet`` is ``gfl_mbv2`` with it), so they decide the claim from Table I's rows too.
NOISE_PAIRS: list[tuple[str, str, str]] = [
    ("distilled", "abl-nmode", "abl-base"),
    ("students alone", "alone-meddet", "plain-gfl_mbv2"),
]
# The paper's figure (a key of meddet.paper.MAP) for each group a claim compares, so that its
# effect sizes can be set beside what our seed spreads resolve. The student alone, the CPU
# proxy and the ImageNet rows have no figure in the paper.
PAPER_FIGURES: dict[str, dict[str, str]] = {
    "1": {"meddet": "meddet", "plain-gfl_mbv2": "gfl_mbv2", "mgd": "mgd", "ld": "ld",
          "fgd": "fgd"},
    "3": {"abl-base": "abl_base", "abl-nmode": "abl_nmode", "abl-lwff": "abl_lwff",
          "meddet": "abl_aatm"},
    "4": {"abl-nmode": "nmode_head", "abl-base": "nmode_none",
          "nmode-backbone": "nmode_backbone", "nmode-fpn": "nmode_fpn"},
    "5": {"meddet": "fusion_lwff", "fusion-sum": "fusion_sum",
          "fusion-concat": "fusion_concat"},
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
    # config values the row trains with on top of the study's config (nested sections, e.g.
    # IMAGENET); the runner writes them into a per-row YAML that the row's --config names
    overrides: dict = field(default_factory=dict)
    # a bench row's own device and batch ("": the study's --device)
    device: str = ""
    batch: int = 1


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; the first seed is also the single-seed rows' seed."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise MedDetError(f"--seeds {text!r} is not a comma list of integers; use e.g. "
                          "0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise MedDetError(f"--seeds {text!r} repeats a seed; list each seed once")
    return seeds


def parse_tables(text: str) -> set[str]:
    """``"1,noise"`` -> ``{"1", "noise"}``; ``"all"`` -> every table of :data:`TABLES`;
    ``"all,imagenet"`` -> those and the optional ``imagenet`` table."""
    tables = set(text.split(","))
    if "all" in tables:
        tables = (tables - {"all"}) | set(TABLES)
    unknown = tables - set(TABLES) - set(OPTIONAL_TABLES)
    if unknown:
        raise MedDetError(f"unknown table(s) {sorted(unknown)}; use "
                          f"{','.join(TABLES + OPTIONAL_TABLES)} or all (all,imagenet adds the "
                          "optional table)")
    return tables


def tables_arg(tables: set[str]) -> str:
    """The ``--tables`` value that :func:`parse_tables` turns into ``tables``."""
    rest = [t for t in TABLES + OPTIONAL_TABLES if t in tables]
    if set(TABLES) <= tables:
        rest = ["all", *(t for t in OPTIONAL_TABLES if t in tables)]
    return ",".join(rest)


def describe_overrides(overrides: dict, prefix: str = "") -> str:
    """``{"model": {"pretrained": "imagenet"}}`` -> ``"model.pretrained=imagenet"``."""
    parts = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            parts.append(describe_overrides(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}={v}")
    return " ".join(parts)


def select(rows: list[Row], only: str | None) -> list[Row]:
    """The rows whose ids are in the comma list ``only`` (all rows when ``None``), in plan
    order. Their dependencies must be finished already: they are not added."""
    if not only:
        return rows
    keep = set(only.split(","))
    unknown = keep - {r.id for r in rows}
    if unknown:
        raise MedDetError(f"--only: no such row(s) {sorted(unknown)} in this plan; "
                          "`meddet study plan` lists the rows of a --tables/--seeds selection")
    return [r for r in rows if r.id in keep]


def plan(seeds: list[int], tables: set[str], teacher_epochs: int | None = None) -> list[Row]:
    """The rows ``tables`` need, most important first.

    Teachers come first, then seed ``seeds[0]`` of every table, the single-seed rows, then the
    other seeds, so that a deadline cuts the least important tail.

    Args:
        seeds: training seeds; the first one is also the single-seed rows' seed.
        tables: a subset of :data:`TABLES` and :data:`OPTIONAL_TABLES`.
        teacher_epochs: train the teachers this many epochs (``None``: the config's).

    Returns:
        the rows, ids unique, in the order they should start.
    """
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
        # AdamW; 2.0 s to write on a 2-core VM) and the R152 GPU run spent ~4 s per epoch
        # outside training, most of it this write. best.pt is still written at every best.
        add(f"teacher-{m}", f"GFL-{m[4:].upper()} (teacher)",
            ["pretrain-teacher", "--model", m, "--seed", "0", "--checkpoint-every", "4",
             *longer])

    def per_seed(s: int) -> None:
        # every seed of GFL-MobileNetV2 and of the MedDet student alone is swept: claim 6's
        # pair of students trained alone (NOISE_PAIRS)
        for m in PLAIN if "1" in t else ("gfl_mbv2",) if t & {"noise", "imagenet"} else ():
            add(f"plain-{m}-s{s}", f"GFL {m[4:]}",
                ["pretrain-teacher", "--model", m, "--seed", str(s)], s,
                noise=m == "gfl_mbv2")
        if t & {"1", "noise"}:
            # The MedDet student architecture (nmODE² head) trained without teachers.
            add(f"alone-meddet-s{s}", "MedDet student alone",
                ["pretrain-teacher", "--model", "meddet", "--seed", str(s)], s, noise=True)
        if "1" in t:
            for k in KD:
                distill(f"{k}-s{s}", k.upper(), s, student="gfl_mbv2", method=k)
        if t & {"1", "2", "3", "4", "5", "lite", "noise", "sweep", "imagenet"}:
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
        if "imagenet" in t:
            # the same commands as plain-gfl_mbv2-sS and meddet-sS, ImageNet-initialised
            add(f"imagenet-plain-gfl_mbv2-s{s}", "GFL mbv2, ImageNet-initialised",
                ["pretrain-teacher", "--model", "gfl_mbv2", "--seed", str(s)], s,
                overrides=IMAGENET)
            distill(f"imagenet-meddet-s{s}", "MedDet, ImageNet-initialised student", s,
                    overrides=IMAGENET)
        if "alone" in t:
            for q in PLACEMENTS:
                add(f"alone-lite-{q}-s{s}", f"meddet_lite alone, nmODE² {where(q)}",
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
        for rid, dev, batch in BENCHES:
            add(rid, f"meddet bench ({dev}, batch {batch})", [], kind="bench", device=dev,
                batch=batch)
    for s in seeds[1:]:
        per_seed(s)
    return list(rows.values())


def gpu_rows(ids: list[str]) -> set[str]:
    """The row ids among ``ids`` that a 2-core CPU cannot run in useful time: the three ResNet
    teachers, every row distilled from them (on such a CPU one teacher takes hours), and the
    GPU timings. Ids the plan does not know count as CPU rows."""
    seeds = sorted({int(m.group(1)) for i in ids if (m := re.search(r"-s(\d+)$", i))} | {0})
    full = plan(seeds, set(TABLES) | set(OPTIONAL_TABLES))
    gpu = {r.id for r in full
           if r.needs or r.id.startswith("teacher-") or r.device.startswith("cuda")}
    return {i for i in ids if i in gpu}


def where(placement: str) -> str:
    """Where nmODE² sits, in words: ``"head"`` -> ``"in the head"``."""
    return {"none": "nowhere", "head": "in the head", "fpn": "in the FPN",
            "backbone": "in the backbone"}[placement]
