"""meddet.study and `meddet study`: the plan, the statistics, the verdicts and the report.

The report is rendered from hand-written ``row.json`` files in the format ``Runner.finish``
writes, and the CLI is only driven where it returns before any work; one test (marked slow)
runs a toy study for real, ImageNet rows included, with a fake ImageNet file and no network.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from meddet.cli import main as cli
from meddet.errors import MedDetError
from meddet.study import noise, records, report, runner, tables, verdicts
from meddet.study.runner import StudyOptions

ROOT = Path(__file__).parents[1]


# --------------------------------------------------------------------------------------------
# stats and verdict


def test_stats_mean_and_sample_sd():
    m, sd, n = verdicts.stats([80.0, 82.0, 84.0])
    # sample sd: deviations -2, 0, 2 -> sum of squares 8 / (3 - 1) = 4 -> 2.0 (population: 1.63)
    assert (m, n) == (82.0, 3)
    assert sd == pytest.approx(2.0)
    m, sd, n = verdicts.stats([1.0, 2.0])
    assert (m, n) == (1.5, 2)
    assert sd == pytest.approx(math.sqrt(0.5))  # (0.25 + 0.25) / 1


def test_stats_one_value_and_empty():
    assert verdicts.stats([71.5]) == (71.5, 0.0, 1)
    m, sd, n = verdicts.stats([])
    assert math.isnan(m) and math.isnan(sd) and n == 0


def test_fmt():
    assert verdicts.fmt((82.0, 2.0, 3)) == "82.0 ± 2.0 (n=3)"
    assert verdicts.fmt((71.25, 0.0, 1)) == "71.2 (n=1)"
    assert verdicts.fmt((math.nan, math.nan, 0)) == "not run"


def test_verdict_uses_the_larger_sample_sd():
    # d = 3; spreads 1 and 2.5 -> 2.5: reproduced
    assert verdicts.verdict((85.0, 1.0, 3), (82.0, 2.5, 3)) == "**reproduced** (+3.0 > spread 2.5)"
    # d = -3 beyond 2.5: contradicted
    assert verdicts.verdict((82.0, 2.5, 3), (85.0, 1.0, 3)) == \
        "**contradicted** (-3.0, beyond spread 2.5)"
    # d = 2 inside 2.5 either way: not resolved
    assert verdicts.verdict((84.0, 1.0, 3), (82.0, 2.5, 3)) == \
        "not resolved (+2.0, within spread 2.5)"
    assert verdicts.verdict((82.0, 2.5, 3), (84.0, 1.0, 3)) == \
        "not resolved (-2.0, within spread 2.5)"
    # the explicit spread is ignored when both rows have their own sd
    assert verdicts.verdict((85.0, 1.0, 3), (82.0, 2.5, 3), spread=10.0).startswith(
        "**reproduced**")


def test_verdict_single_seed_rows_use_spread():
    a, b = (85.0, 0.0, 1), (84.0, 0.0, 1)
    assert verdicts.verdict(a, b, spread=0.5) == "**reproduced** (+1.0 > spread 0.5)"
    assert verdicts.verdict(a, b, spread=1.5) == "not resolved (+1.0, within spread 1.5)"
    assert verdicts.verdict(b, a, spread=0.5) == "**contradicted** (-1.0, beyond spread 0.5)"
    assert verdicts.verdict(a, b) == "+1.0: one seed, spread unknown, not assessable"
    assert verdicts.verdict(a, b, spread=math.nan).endswith("not assessable")


def test_verdict_not_run():
    empty = verdicts.stats([])
    assert verdicts.verdict(empty, (80.0, 1.0, 3), spread=1.0) == "not run"
    assert verdicts.verdict((80.0, 1.0, 3), empty, spread=1.0) == "not run"


# --------------------------------------------------------------------------------------------
# the plan


@pytest.fixture(scope="module")
def full_plan():
    return tables.plan([0, 1, 2], set(tables.TABLES))


def test_plan_ids_unique_and_count(full_plan):
    ids = [r.id for r in full_plan]
    assert len(ids) == len(set(ids))
    # 3 teachers + 3 seeds x (6 plain + alone-meddet + 3 KD + meddet + abl-base/nmode/lwff
    # + lite = 15) + nmode-backbone/fpn + fusion-sum/concat + 4 sweep rows + 3 bench rows
    # (CPU b1, GPU b1, GPU b32) = 59, + 3 seeds x 4 nmODE² placements of meddet_lite trained
    # alone = 71
    assert len(ids) == 3 + 3 * 15 + 4 + 4 + 3 + 3 * 4
    alone = [r for r in full_plan if r.id.startswith("alone-meddet-")]
    assert [r.argv[:3] for r in alone] == [["pretrain-teacher", "--model", "meddet"]] * 3
    assert {r.group for r in alone} == {"alone-meddet"}


def test_plan_teachers_first_and_distill_needs_them(full_plan):
    teachers = ("teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152")
    assert tuple(r.id for r in full_plan[:3]) == teachers
    assert all(r.argv[0] == "pretrain-teacher" for r in full_plan[:3])
    distill = [r for r in full_plan if r.argv and r.argv[0] == "distill"]
    # per seed: KD x3, meddet, abl-base/nmode/lwff, lite = 8; single-seed: nmode x2, fusion x2,
    # sweep x4 = 8
    assert len(distill) == 3 * 8 + 8
    for r in distill:
        assert r.needs == teachers, r.id
        assert r.checkpoint == "student.pt", r.id
        assert r.argv[r.argv.index("--teachers") + 1] == \
            "@teacher-gfl_r50,@teacher-gfl_r101,@teacher-gfl_r152"
        assert r.argv[r.argv.index("--seed") + 1] == str(r.seed)
    for r in full_plan:
        if r.argv and r.argv[0] == "pretrain-teacher":
            assert r.needs == () and r.checkpoint == "best.pt", r.id


def test_plan_rows_per_seed_and_single_seed(full_plan):
    by_id = {r.id: r for r in full_plan}
    for s in (0, 1, 2):
        for rid in (f"meddet-s{s}", f"mgd-s{s}", f"ld-s{s}", f"fgd-s{s}", f"abl-base-s{s}",
                    f"abl-nmode-s{s}", f"abl-lwff-s{s}", f"plain-gfl_mbv2-s{s}",
                    f"plain-gfl_shufflenetv2-s{s}", f"lite-s{s}"):
            assert by_id[rid].seed == s, rid
    singles = ["nmode-backbone", "nmode-fpn", "fusion-sum", "fusion-concat",
               "sweep-sigma0.7-tau0.2", "sweep-sigma0.3-tau0.5", "sweep-sigma0.8-tau0.1",
               "sweep-sigma0.4-tau0.2", "bench-cpu", "bench-cuda-b1", "bench-cuda-b32"]
    for rid in singles:
        assert by_id[rid].seed == 0
        assert by_id[rid].group == rid
    assert not any(rid.startswith(p) for rid in by_id
                   for p in ("nmode-backbone-s", "fusion-sum-s", "sweep-sigma0.7-tau0.2-s"))
    # the default sigma/tau is meddet-s0 itself, not a sweep row
    sweep = sorted(rid for rid in by_id if rid.startswith("sweep-"))
    assert len(sweep) == 4 and "sweep-sigma0.5-tau0.3" not in by_id
    assert [(by_id[r].kind, by_id[r].argv, by_id[r].device, by_id[r].batch) for r in singles[-3:]
            ] == [("bench", [], "cpu", 1), ("bench", [], "cuda", 1), ("bench", [], "cuda", 32)]


def test_plan_groups(full_plan):
    by_id = {r.id: r for r in full_plan}
    assert by_id["meddet-s1"].group == "meddet"
    assert by_id["plain-gfl_mbv2-s2"].group == "plain-gfl_mbv2"
    assert by_id["plain-gfl_shufflenet-s1"].group == "plain-gfl_shufflenet"
    assert by_id["abl-base-s1"].group == "abl-base"
    assert by_id["teacher-gfl_r101"].group == "teacher-gfl_r101"
    groups: dict[str, set[int]] = {}
    for r in full_plan:
        groups.setdefault(r.group, set()).add(r.seed)
    assert groups["meddet"] == groups["mgd"] == groups["lite"] == {0, 1, 2}


def test_plan_row_arguments(full_plan):
    by_id = {r.id: r for r in full_plan}
    for k in ("mgd", "ld", "fgd"):
        argv = by_id[f"{k}-s2"].argv
        assert argv[argv.index("--student") + 1] == "gfl_mbv2"
        assert argv[argv.index("--method") + 1] == k
    base = by_id["abl-base-s1"].argv
    assert base[base.index("--nmode") + 1] == "none"
    assert base[base.index("--fusion") + 1] == "sum"
    assert "--no-aatm" in base
    nm = by_id["abl-nmode-s0"].argv
    assert "--nmode" not in nm and "--no-aatm" in nm and nm[nm.index("--fusion") + 1] == "sum"
    lwff = by_id["abl-lwff-s0"].argv
    assert "--no-aatm" in lwff and "--fusion" not in lwff
    med = by_id["meddet-s0"].argv
    assert med[med.index("--student") + 1] == "meddet"
    assert "--no-aatm" not in med and "--fusion" not in med and "--nmode" not in med
    fpn = by_id["nmode-fpn"].argv
    assert fpn[fpn.index("--nmode") + 1] == "fpn"
    lite = by_id["lite-s1"].argv
    assert lite[lite.index("--student") + 1] == "meddet_lite"
    sw = by_id["sweep-sigma0.8-tau0.1"].argv
    assert sw[sw.index("--sigma") + 1] == "0.8" and sw[sw.index("--tau") + 1] == "0.1"
    plain = by_id["plain-gfl_effb1-s2"].argv
    assert plain == ["pretrain-teacher", "--model", "gfl_effb1", "--seed", "2"]


def test_plan_noise_rows(full_plan):
    noisy = {r.id for r in full_plan if r.noise}
    alone = {f"alone-lite-{q}-s{s}" for q in ("head", "none", "fpn", "backbone")
             for s in (0, 1, 2)}
    pairs = {f"{g}-s{s}" for g in ("abl-base", "abl-nmode", "alone-meddet", "plain-gfl_mbv2")
             for s in (0, 1, 2)}
    assert noisy == set(tables.NOISE_ROWS) | alone | pairs
    # claim 6's pairs are swept at every seed, the other plain detectors not at all
    assert {g for _, a, b in tables.NOISE_PAIRS for g in (a, b)} == {
        "abl-base", "abl-nmode", "alone-meddet", "plain-gfl_mbv2"}
    assert not {r.id: r for r in full_plan}["plain-gfl_effb0-s0"].noise
    assert not {r.id: r for r in full_plan}["meddet-s1"].noise


def test_plan_priority_seed0_first(full_plan):
    ids = [r.id for r in full_plan]
    seed_of = [r.seed for r in full_plan]
    first_other = seed_of.index(1)
    assert all(s == 0 for s in seed_of[:first_other])
    assert seed_of.index(2) > max(i for i, s in enumerate(seed_of) if s == 1)
    # all single-seed rows and every table's seed-0 rows are before the first seed-1 row
    for rid in ("meddet-s0", "mgd-s0", "abl-lwff-s0", "lite-s0", "plain-gfl_shufflenet-s0",
                "nmode-fpn", "fusion-concat", "sweep-sigma0.4-tau0.2", "bench-cpu",
                "bench-cuda-b32"):
        assert ids.index(rid) < first_other, rid


def test_plan_subsets():
    ids = [r.id for r in tables.plan([0], {"5"})]
    assert ids == ["teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152", "meddet-s0",
                   "fusion-sum", "fusion-concat"]
    ids = [r.id for r in tables.plan([0, 1], {"noise"})]
    assert ids == ["teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152",
                   "plain-gfl_mbv2-s0", "alone-meddet-s0", "meddet-s0", "abl-base-s0",
                   "abl-nmode-s0", "plain-gfl_mbv2-s1", "alone-meddet-s1", "meddet-s1",
                   "abl-base-s1", "abl-nmode-s1"]
    # seeds[0] other than 0: the single-seed rows carry that seed
    rows = {r.id: r for r in tables.plan([3, 4], {"4"})}
    assert rows["nmode-backbone"].seed == 3 and rows["abl-base-s4"].group == "abl-base"


def test_plan_alone_needs_no_teachers():
    rows = tables.plan([0, 1], {"alone"})
    # no teacher rows: the table is CPU-feasible; seed-major, placements in a fixed order
    assert [r.id for r in rows] == [f"alone-lite-{q}-s{s}" for s in (0, 1)
                                    for q in ("head", "none", "fpn", "backbone")]
    for r in rows:
        q = r.id.split("-")[2]
        assert r.argv == ["pretrain-teacher", "--model", "meddet_lite", "--nmode", q, "--seed",
                          str(r.seed)]
        assert r.needs == () and r.noise and r.group == f"alone-lite-{q}"
    # with any teacher table beside it, the teachers come first again
    assert tables.plan([0], {"alone", "5"})[0].id == "teacher-gfl_r50"


def test_resolve(tmp_path):
    runs = tmp_path / "runs"
    argv = ["distill", "--teachers", "@teacher-gfl_r50,@teacher-gfl_r101", "--seed", "0"]
    out = runner.resolve_teachers(argv, runs)
    assert out == ["distill", "--teachers",
                   f"{runs / 'teacher-gfl_r50' / 'best.pt'},"
                   f"{runs / 'teacher-gfl_r101' / 'best.pt'}",
                   "--seed", "0"]
    assert argv[2].startswith("@")  # the row's argv is not modified


# --------------------------------------------------------------------------------------------
# the report


def _test_json(map50: float, *, sweep: list[tuple] | None = None) -> dict:
    """A ``meddet eval --json`` result with mAP half of ``map50``; ``sweep``: (noise, mAP50)
    entries as in records older than the headline metric, or (noise, mAP50, mAP)."""
    t = {"mAP": map50 / 2, "mAP50": map50, "recall": 0.9,
         "per_class": {"protrusion": {"mAP": 0.3, "mAP50": map50 - 0.1, "recall": 0.8},
                       "non-protrusion": {"mAP": 0.4, "mAP50": map50 + 0.1, "recall": 0.95}}}
    if sweep is not None:
        t["noise_sweep"] = [{"noise": e[0], "mAP50": e[1], **({"mAP": e[2]} if e[2:] else {})}
                            for e in sweep]
    return t


def _write_row(out: Path, rid: str, group: str, seed: int, test: dict, *,
               seconds: float = 100.0, best_val: float | None = 0.5) -> None:
    d = out / "runs" / rid
    d.mkdir(parents=True)
    info = {"id": rid, "label": f"label {rid}", "seed": seed, "group": group,
            "seconds": seconds, "commands": [f"meddet train {rid}", f"meddet eval {rid}"],
            "device": "cpu", "config": "cpu-small", "test": test, "best_val_mAP50": best_val}
    (d / "row.json").write_text(json.dumps(info))


@pytest.fixture
def fake_study(tmp_path):
    out = tmp_path / "study"
    for s, v in enumerate((0.80, 0.82, 0.84)):
        sweep = [(None, v), ("rician:40", 0.75), ("rician:5", 0.50)] if s == 0 else None
        _write_row(out, f"meddet-s{s}", "meddet", s, _test_json(v, sweep=sweep),
                   seconds=100.0 + 10 * s)
    for s, v in enumerate((0.70, 0.71, 0.72)):
        _write_row(out, f"plain-gfl_mbv2-s{s}", "plain-gfl_mbv2", s, _test_json(v))
    _write_row(out, "fusion-sum", "fusion-sum", 0, _test_json(0.86))
    _write_row(out, "sweep-sigma0.7-tau0.2", "sweep-sigma0.7-tau0.2", 0, _test_json(0.78),
               best_val=0.9)
    return out


def _line(text: str, start: str) -> str:
    hits = [ln for ln in text.splitlines() if ln.startswith(start)]
    assert len(hits) == 1, (start, hits)
    return hits[0]


def test_render(fake_study):
    text = report.render(records.load_rows(fake_study), {})
    t1 = text.split("## Table I:")[1].split("\n## ")[0]
    assert _line(t1, "| row | paper mAP |") == (
        "| row | paper mAP | ours mAP | ours mAP50 | protrusion AP50 | wall-clock per run "
        "| training s per image |")
    med = _line(text, "| **MedDet** (3 teachers) |")
    # mAP (half of mAP50) 40/41/42 -> 41.0 ± 1.0 first; mAP50 80/82/84 -> 82.0 ± 2.0;
    # protrusion 70/72/74; 100/110/120 s -> 110 s
    assert med == ("| **MedDet** (3 teachers) | 85.5 | 41.0 ± 1.0 (n=3) | 82.0 ± 2.0 (n=3) | "
                   "72.0 ± 2.0 (n=3) | 110 s | — |")
    plain = _line(text, "| GFL mbv2 |")
    assert "| 80.8 | 35.5 ± 0.5 (n=3) | 71.0 ± 1.0 (n=3) |" in plain
    # decided on mAP: 41.0 - 35.5 = +5.5 beyond the larger sd 1.0; mAP50 beside it
    assert ("MedDet vs GFL-MobileNetV2: **reproduced** (+5.5 > spread 1.0) · mAP50: reproduced "
            "(+11.0 > spread 2.0)") in text
    assert "MedDet vs MGD: not run" in text
    assert "MedDet vs its student alone: not run" in text
    mgd = _line(text, "| MGD (GFL-MobileNetV2 student, best teacher) |")
    assert mgd.count("not run") == 3 and mgd.endswith("| — |")
    # Table V: fusion-sum one seed, mAP 43.0 vs MedDet 41.0: d = -2 beyond MedDet's spread 1
    assert _line(text, "| sum |").startswith("| sum | 85.1 | 43.0 (n=1) | 86.0 (n=1) |")
    assert ("LWFF vs sum: **contradicted** (-2.0, beyond spread 1.0; one row has one seed) · "
            "mAP50: contradicted (-4.0, beyond spread 2.0; one row has one seed)") in text
    assert "LWFF vs concat: not run" in text
    # Table III rows never ran
    assert "nmODE² adds: not run" in text
    # noise table: only meddet-s0 has a sweep, of mAP50 alone (mAP: —); clean 80, 75, 50 ->
    # drop 30
    assert "| model | test | clean | rician:40 | rician:5 | drop clean → lowest SNR |" in text
    assert "| label meddet-s0 (`meddet-s0`) | mAP | — | — | — | — |\n|  | mAP50 | 80.0 | 75.0 | " \
        "50.0 | 30.0 |" in text
    # sweep table: sorted by best val (0.9 first), the default row is meddet-s0; mAP first
    sw = text.split("## σ / τ sweep")[1].split("##")[0]
    body = [ln for ln in sw.splitlines() if ln.startswith("| 0.")]
    assert body == ["| 0.7 | 0.2 | 0.1 | 90.0 | 39.0 | 78.0 |",
                    "| 0.5 | 0.3 | 0.2 | 50.0 | 40.0 | 80.0 |"]
    assert "seed-to-seed spread of test mAP at the default σ, τ (1.0 points)" in sw
    # rows section lists every row with its commands
    assert "| meddet-s1 | cpu | 110 | — | `meddet train meddet-s1 && meddet eval meddet-s1` |" \
        in text
    assert "no row here records its learning curve" in text
    assert "## MedDet-lite:" not in text  # no lite rows
    # every Table I row that ran has 3 seeds: no shortfall line; Table III never ran
    assert "Fewer than the 3 seeds" not in text


def test_resolution_sets_the_spreads_beside_the_papers_effects(fake_study):
    text = report.render(records.load_rows(fake_study), {})
    # MedDet mAP 40/41/42 (sd 1.0) vs plain 35/35.5/36 (sd 0.5): judged by 1.0; MGD, LD, FGD
    # and the student alone did not run. The paper: 85.5 - 80.8 = +4.7, MGD +1.3, LD +0.8,
    # FGD +1.0; none is compared here, so none is "within our spread".
    t1 = text.split("## Table I:")[1].split("\n## ")[0]
    assert _line(t1, "What the spreads resolve: ") == (
        "What the spreads resolve: differences above 1.0 mAP points; the paper's effects: "
        "MedDet vs GFL-MobileNetV2 +4.7, MedDet vs MGD +1.3, MedDet vs LD +0.8, "
        "MedDet vs FGD +1.0.")
    # Table V: LWFF (MedDet, sd 1.0) vs the single-seed sum row: judged by 1.0; the paper's
    # LWFF - sum = 85.5 - 85.1 = +0.4 is within it; concat did not run
    t5 = text.split("## Table V:")[1].split("\n## ")[0]
    assert _line(t5, "What the spreads resolve: ") == (
        "What the spreads resolve: differences above 1.0 mAP points; the paper's effects: "
        "LWFF vs sum +0.4, LWFF vs concat +0.5 (within our spread: LWFF vs sum).")
    summary = text.split("## The paper's claims")[1].split("\n## ")[0]
    assert "| what the spreads resolve |" in summary
    assert _line(summary, "| 5. LWFF").endswith(
        "| differences above 1.0 mAP points; the paper's effects: LWFF vs sum +0.4, LWFF vs "
        "concat +0.5 (within our spread: LWFF vs sum) | — |")
    # no comparison measured: Table III
    t3 = text.split("## Table III:")[1].split("\n## ")[0]
    assert _line(t3, "What the spreads resolve: ").startswith(
        "What the spreads resolve: unknown (no comparison with a measured spread); the "
        "paper's effects: nmODE² adds +0.8, LWFF adds +0.3, AATM adds +0.2")


def test_rows_table_says_which_rows_reached_a_plateau(fake_study):
    rows = records.load_rows(fake_study)
    rows["meddet-s0"]["last_quarter"] = {"start_iter": 1400, "end_iter": 2000,
                                         "start_mAP50": 0.770, "end_mAP50": 0.806}
    rows["meddet-s1"]["last_quarter"] = {"start_iter": 1400, "end_iter": 2000,
                                         "start_mAP50": 0.800, "end_mAP50": 0.805}
    text = report.render(rows, {})
    assert _line(text, "| meddet-s0 |").startswith("| meddet-s0 | cpu | 100 | 0.770 → 0.806 (+3.6) |")
    assert _line(text, "| meddet-s1 |").startswith("| meddet-s1 | cpu | 110 | 0.800 → 0.805 (+0.5) |")
    plateau = _line(text, "Plateau: ")
    # 2 of 8 trained rows have a curve: meddet-s1 gains 0.5 < 1 point, meddet-s0 3.6
    assert plateau.endswith("1 of 2 rows with a learning curve are on one; not: meddet-s0; "
                            "6 row(s) record no curve.")


def test_render_names_rows_short_of_seeds(fake_study):
    _write_row(fake_study, "mgd-s0", "mgd", 0, _test_json(0.9))
    for s in (0, 1):
        _write_row(fake_study, f"abl-base-s{s}", "abl-base", s, _test_json(0.6))
    text = report.render(records.load_rows(fake_study), {})
    t1 = text.split("## Table I:")[1].split("\n## ")[0]
    assert _line(t1, "Fewer than the 3 seeds").startswith(
        "Fewer than the 3 seeds planned for this table, so far: MGD (GFL-MobileNetV2 student, "
        "best teacher) (n=1); ")
    assert "One seed is enough" not in t1
    # The other lightweight backbones decide no claim: one seed of them is not "short", and
    # the table says one is enough; the plain GFL-MobileNetV2 (a claim's row) still counts.
    _write_row(fake_study, "plain-gfl_effb0-s0", "plain-gfl_effb0", 0, _test_json(0.7))
    t1 = report.render(records.load_rows(fake_study), {}).split("## Table I:")[1].split("\n## ")[0]
    assert _line(t1, "One seed is enough").startswith("One seed is enough for GFL effb0: ")
    assert "effb0" not in _line(t1, "Fewer than the 3 seeds")
    t3 = text.split("## Table III:")[1].split("\n## ")[0]
    assert "so far: KD baseline: teachers summed, no AATM, no nmODE² (n=2); " in t3
    # Tables IV and V are single-seed by design: no such line there
    t5 = text.split("## Table V:")[1].split("\n## ")[0]
    assert "Fewer than" not in t5


def _alone(out: Path, q: str, s: int, clean: float, snr5: float) -> None:
    # mAP half of mAP50 at every level, as in the row's test metrics
    _write_row(out, f"alone-lite-{q}-s{s}", f"alone-lite-{q}", s,
               _test_json(clean, sweep=[(None, clean, clean / 2),
                                        ("rician:5", snr5, snr5 / 2)]))


def test_render_alone_table_and_noise_claim(tmp_path):
    out = tmp_path / "study"
    # drops (points): head 10, 6, 8 -> 8.0 ± 2.0; none 1, 3, 2 -> 2.0 ± 1.0
    for s, (c, n) in enumerate(((0.80, 0.70), (0.60, 0.54), (0.70, 0.62))):
        _alone(out, "head", s, c, n)
    for s, (c, n) in enumerate(((0.50, 0.49), (0.55, 0.52), (0.60, 0.58))):
        _alone(out, "none", s, c, n)
    _alone(out, "fpn", 0, 0.01, 0.0)
    rows = records.load_rows(out)
    text = report.render(rows, {"config": "cpu-small", "teacher_epochs": 40})
    sec = text.split("## Table IV, CPU proxy")[1].split("\n## ")[0]
    # mAP: head 40/30/35 -> 35.0 ± 5.0, none 25/27.5/30 -> 27.5 ± 2.5; mAP50 twice that
    assert _line(sec, "| nmODE² in the head |").startswith(
        "| nmODE² in the head | 85.0 | 35.0 ± 5.0 (n=3) | 70.0 ± 10.0 (n=3) |")
    assert _line(sec, "| nmODE² nowhere |").startswith(
        "| nmODE² nowhere | 84.2 | 27.5 ± 2.5 (n=3) | 55.0 ± 5.0 (n=3) |")
    assert _line(sec, "| nmODE² in the backbone |").count("not run") == 3
    # +7.5 beyond the head's spread of 5 -> reproduced; fpn one seed (mAP 0.5), +34.5 > 5
    assert ("head vs none: **reproduced** (+7.5 > spread 5.0) · mAP50: reproduced (+15.0 > "
            "spread 10.0)") in sec
    assert ("head vs fpn: **reproduced** (+34.5 > spread 5.0; one row has one seed) · mAP50: "
            "reproduced (+69.0 > spread 10.0; one row has one seed)") in sec
    assert "head vs backbone: not run" in sec
    # its regeneration command: CPU, no teacher epochs
    assert ("Regenerate: `meddet study run --config cpu-small --tables alone "
            "--seeds 0,1,2 --device cpu --jobs 2 --threads-per-job 1`") in sec
    assert "--tables 3 --seeds 0,1,2 --device cuda --teacher-epochs 40`" in text
    sweep = text.split("## Noise robustness with and without nmODE²")[1].split("\n## ")[0]
    # head mAP clean 35.0 ± 5.0, SNR 5 (35+27+31)/3 = 31.0 ± 4.0, drop 4.0 ± 1.0; then mAP50:
    # clean 70.0 ± 10.0, SNR 5 (70+54+62)/3 = 62.0 ± 8.0; drop 8.0 ± 2.0
    assert _line(sweep, "| nmODE² | test |").startswith("| nmODE² | test | clean | rician:5 |")
    head = sweep.split("| in the head (`alone-lite-head`) |")[1].splitlines()
    assert head[:2] == [" mAP | 35.0 ± 5.0 (n=3) | 31.0 ± 4.0 (n=3) | 4.0 ± 1.0 (n=3) |",
                        "|  | mAP50 | 70.0 ± 10.0 (n=3) | 62.0 ± 8.0 (n=3) | 8.0 ± 2.0 (n=3) |"]
    assert "| in the FPN (`alone-lite-fpn`) | mAP | 0.5 (n=1) | 0.0 (n=1) | 0.5 (n=1) |" in sweep
    # the claim on mAP: drop without (1.0 ± 0.5) - drop with (4.0 ± 1.0) = -3.0, beyond the
    # larger sd 1.0; on mAP50 -6.0 beyond 2.0
    assert ("difference of the mean drops): **contradicted** (-3.0, beyond spread 1.0); per "
            "seed, drop with − drop without: s0 +4.5, s1 +1.5, s2 +3.0 · mAP50: contradicted "
            "(-6.0, beyond spread 2.0); per seed, drop with − drop without: s0 +9.0, s1 +3.0, "
            "s2 +6.0.") in sweep
    png = tmp_path / "img" / "results_noise_alone.png"
    noise.plot_noise_alone(rows, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_of_claims(fake_study):
    _write_row(fake_study, "teacher-gfl_r50", "teacher-gfl_r50", 0, _test_json(0.83))
    _write_row(fake_study, "teacher-gfl_r101", "teacher-gfl_r101", 0, _test_json(0.90))
    bench = {"device_name": "GPU", "device": "cuda", "batch_size": 1, "models": [
        {"name": "gfl_r50", "params_m": 32.0, "gflops": 50.0, "fps": 10.0},
        {"name": "meddet", "params_m": 8.0, "gflops": 30.0, "fps": 25.0},
        {"name": "meddet", "runtime": "onnxruntime", "params_m": 1.0, "gflops": 1.0,
         "fps": 99.0}]}
    d = fake_study / "runs" / "bench"
    d.mkdir()
    (d / "row.json").write_text(json.dumps({"id": "bench", "label": "b", "seed": 0,
                                            "group": "bench", "seconds": 1.0,
                                            "commands": [], "bench": bench}))
    text = report.render(records.load_rows(fake_study), {})
    sec = text.split("## The paper's claims on this benchmark, in one place")[1].split(
        "\n## ")[0]
    # claim 1 carries Table I's verdicts verbatim
    assert ("MedDet vs GFL-MobileNetV2: **reproduced** (+5.5 > spread 1.0) · mAP50: reproduced "
            "(+11.0 > spread 2.0)") in _line(sec, "| 1.")
    # claim 2 on mAP: MedDet 41.0 ± 1.0 vs R50 41.5 (n=1): -0.5 within 1.0; vs R101 45.0: -4.0
    # beyond; mAP50 beside (82.0 ± 2.0 vs 83.0 and 90.0); R152 never ran; cost from the torch
    # bench rows only: 8/32 = 25 %, 30/50 = 60 %, 2.50x
    c2 = _line(sec, "| 2.")
    assert ("MedDet − GFL-R50 -0.5 (within the spread 1.0: as accurate, as far as these seeds "
            "tell) · mAP50: -1.0 (within the spread 2.0: as accurate, as far as these seeds "
            "tell); MedDet − GFL-R101 -4.0 (beyond the spread 1.0: **less accurate**) · mAP50: "
            "-8.0 (beyond the spread 2.0: less accurate); cost against GFL-R50: 25% of its "
            "parameters, 60% of its GFLOPs, 2.50× its FPS on GPU (batch 1)") in c2
    assert "R152" not in c2
    assert _line(sec, "| 5.").startswith(
        "| 5. LWFF beats sum and concatenation (Table V) | LWFF vs sum: **contradicted** (-2.0")
    assert _line(sec, "| 6.").endswith(
        "| distilled (`abl-nmode` vs `abl-base`): not run; students alone (`alone-meddet` vs "
        "`plain-gfl_mbv2`): not run | — | not run |")


def test_noise_verdict(tmp_path):
    out = tmp_path / "study"
    # with nmODE²: drops 2, 4 -> 3.0 ± 1.4; without: drops 10, 12 -> 11.0 ± 1.4 (seed 1 only
    # pairs with seed 1): the paper's direction, beyond the spread
    for s, (c, n) in enumerate(((0.80, 0.78), (0.80, 0.76))):
        _write_row(out, f"abl-nmode-s{s}", "abl-nmode", s,
                   _test_json(c, sweep=[(None, c), ("rician:5", n)]))
    for s, (c, n) in ((1, (0.70, 0.60)), (2, (0.70, 0.58))):
        _write_row(out, f"abl-base-s{s}", "abl-base", s,
                   _test_json(c, sweep=[(None, c), ("rician:5", n)]))
    rows = records.load_rows(out)
    assert verdicts.noise_verdict(rows, "abl-nmode", "abl-base") == (
        "**reproduced** (+8.0 > spread 1.4); per seed, drop with − drop without: s1 -6.0")
    assert verdicts.noise_verdict(rows, "abl-nmode", "nope") == "not run"


def test_render_alone_not_run():
    text = report.render({}, {})
    assert "head vs none: not run" in text
    assert "## Noise robustness with and without nmODE² (`meddet_lite` trained alone, CPU " \
        "proxy)\n\nnot run" in text


def test_wall_clock_per_device(tmp_path):
    out = tmp_path / "study"
    _write_row(out, "plain-gfl_mbv2-s0", "plain-gfl_mbv2", 0, _test_json(0.5), seconds=200.0)
    _write_row(out, "plain-gfl_mbv2-s1", "plain-gfl_mbv2", 1, _test_json(0.5), seconds=3000.0)
    _write_row(out, "plain-gfl_mbv2-s2", "plain-gfl_mbv2", 2, _test_json(0.5), seconds=3200.0)
    info = json.loads((out / "runs" / "plain-gfl_mbv2-s0" / "row.json").read_text())
    (out / "runs" / "plain-gfl_mbv2-s0" / "row.json").write_text(
        json.dumps({**info, "device": "cuda"}))
    rows = records.load_rows(out)
    assert verdicts.group_seconds(rows, "plain-gfl_mbv2") == {"cpu": 3100.0, "cuda": 200.0}
    assert _line(report.render(rows, {}), "| GFL mbv2 |").endswith(
        "| 3100 s (cpu) / 200 s (cuda) | — |")
    assert report._secs({}) == "—" and report._secs({"cuda": 99.6}) == "100 s"


def test_verdict_marks_a_single_seed_side():
    # the spread comes from the 3-seed row; the other side is one run
    assert verdicts.verdict((85.0, 1.0, 3), (82.0, 0.0, 1)) == \
        "**reproduced** (+3.0 > spread 1.0; one row has one seed)"
    assert verdicts.verdict((85.0, 1.0, 3), (84.5, 2.0, 3)) == "not resolved (+0.5, within spread 2.0)"


def test_paired_and_lite_verdict(fake_study):
    # lite seeds 0 and 2 only (seed 1 missing): mAP50 0.86 - 0.80 = +6, 0.80 - 0.84 = -4
    for s, v in ((0, 0.86), (2, 0.80)):
        _write_row(fake_study, f"lite-s{s}", "lite", s, _test_json(v))
    rows = records.load_rows(fake_study)
    diffs = verdicts.paired(rows, "lite", "meddet")
    assert list(diffs) == [0, 2]
    assert diffs[0] == pytest.approx(6.0) and diffs[2] == pytest.approx(-4.0)
    assert verdicts.paired(rows, "lite", "meddet", "mAP") == pytest.approx({0: 3.0, 2: -2.0})
    text = report.render(rows, {})
    sec = text.split("## MedDet-lite: accuracy next to")[1].split("##")[0]
    # on mAP (half): MedDet 41.0 ± 1.0 (n=3), lite 41.5 ± 2.1 (n=2) -> +0.5, met; spread 2.1 > 1;
    # mAP50 82.0 ± 2.0 vs 83.0 ± 4.2 beside
    assert ("MedDet 41.0 ± 1.0 (n=3) vs MedDet-lite 41.5 ± 2.1 (n=2) test mAP: difference of the "
            "means +0.5 points (mAP50: MedDet 82.0 ± 2.0 (n=3) vs MedDet-lite 83.0 ± 4.2 (n=2), "
            "+1.0) (per seed, lite − MedDet: s0 +3.0, s2 -2.0)") in sec
    assert "**met** on the means" in sec
    assert "spread (2.1 points) is larger than the margin, so these 2 seeds cannot resolve" in sec
    # 1.5 points below with no spread: not met, no spread sentence
    v = verdicts.lite_verdict((80.0, 0.2, 3), (78.5, 0.4, 3), {})
    assert "difference of the means -1.5 points." in v and "**not met**" in v
    assert "cannot resolve" not in v
    assert "**met**" in verdicts.lite_verdict((80.0, 0.2, 3), (79.0, 0.4, 3), {})  # exactly -1


def test_render_empty():
    text = report.render({}, {})
    assert "MedDet vs GFL-MobileNetV2: not run" in text
    assert "## Noise robustness: test mAP and mAP50 against Rician SNR\n\nnot run" in text
    assert "σ / τ sweep" not in text


def test_render_meta(fake_study):
    meta = {"config": "cpu-small", "extra": ["--max-iters", "2"], "teacher_epochs": 60,
            "data": "d", "device": "cuda", "device_name": "H100", "cpus": 16, "torch": "2.x",
            "python": "3.11", "invocations": [
                {"command": "study.py --jobs 12", "jobs": 12, "finished": "today"},
                {"command": "study.py --only bench", "jobs": 1, "finished": "later",
                 "device_name": "H200"}]}
    rows = records.load_rows(fake_study)
    text = report.render(rows, meta, planned=[*rows, "mgd-s0", "ld-s0"])
    assert "* command (12 rows at a time, finished today): `study.py --jobs 12`" in text
    assert ("* command (1 rows at a time, on H200, finished later): `study.py --only bench`"
            in text)
    assert "`--config cpu-small` --max-iters 2; teachers 60 epochs" in text
    assert "* machine: cuda (H100), 16 CPUs, torch 2.x, Python 3.11\n" in text
    merged = {k: v for k, v in meta.items() if k not in ("cpus", "torch", "python")}
    assert "* machine: cuda (H100)\n" in report.render(rows, merged)
    assert f"rows finished: {len(rows)} of {len(rows) + 2} planned; not run (yet): mgd-s0, ld-s0" \
        in text
    assert "  * 2 of them are GPU rows (the three ResNet teachers" in text
    assert "need no teachers" not in text  # no CPU row is missing
    text = report.render(rows, meta, planned=[*rows, "mgd-s0", "alone-lite-fpn-s7"])
    assert "  * 1 of them are GPU rows" in text
    assert "  * 1 need no teachers and can run on a CPU" in text


def test_gpu_rows_are_the_teachers_every_distilled_row_and_the_gpu_timings():
    ids = ["teacher-gfl_r50", "plain-gfl_mbv2-s1", "alone-meddet-s4", "alone-lite-head-s3",
           "imagenet-plain-gfl_mbv2-s0", "bench-cpu", "bench-cuda-b1", "bench-cuda-b32",
           "meddet-s2", "lite-s0", "fusion-sum", "nmode-fpn", "sweep-sigma0.7-tau0.2",
           "imagenet-meddet-s1", "mgd-s5", "abl-lwff-s9", "no-such-row"]
    assert tables.gpu_rows(ids) == {
        "teacher-gfl_r50", "bench-cuda-b1", "bench-cuda-b32", "meddet-s2", "lite-s0",
        "fusion-sum", "nmode-fpn", "sweep-sigma0.7-tau0.2", "imagenet-meddet-s1", "mgd-s5",
        "abl-lwff-s9"}


def test_write_report(fake_study, tmp_path):
    dest = tmp_path / "docs" / "results.md"
    text = report.write_report(fake_study, dest, None)
    assert dest.read_text() == text
    assert "82.0 ± 2.0 (n=3)" in text
    assert sorted(p.name for p in dest.parent.iterdir()) == ["img", "results.md"]
    png = dest.parent / "img" / "results_noise.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # writing the report does not write study.json
    assert not (fake_study / "study.json").exists()


def test_write_report_reads_study_json_and_skips_plot_without_noise(tmp_path):
    out = tmp_path / "study"
    _write_row(out, "meddet-s1", "meddet", 1, _test_json(0.5))
    (out / "study.json").write_text(json.dumps({"command": "from-json", "jobs": 3}))
    dest = tmp_path / "r" / "results.md"
    text = report.write_report(out, dest)
    assert "* command (3 rows at a time, finished None): `from-json`" in text
    assert "50.0 (n=1)" in text
    assert [p.name for p in dest.parent.iterdir()] == ["results.md"]


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_plan(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["study", "plan", "--seeds", "0", "--tables", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [
        "teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152", "meddet-s0", "fusion-sum",
        "fusion-concat"]
    assert "needs=teacher-gfl_r50,teacher-gfl_r101,teacher-gfl_r152" in lines[4]
    assert lines[4].rstrip().endswith("--fusion sum --seed 0")
    assert list(tmp_path.iterdir()) == []  # the plan writes nothing
    assert cli(["study", "plan", "--seeds", "0", "--tables", "2", "--only",
                "bench-cpu,bench-cuda-b32"]) == 0
    assert [ln.split(None, 2)[2] for ln in capsys.readouterr().out.splitlines()] == [
        "meddet bench --device cpu --batch-size 1", "meddet bench --device cuda --batch-size 32"]


def test_options_parsing():
    a = StudyOptions(seeds=tables.parse_seeds("0,2"), tables=tables.parse_tables("1,noise"),
                     out="x")
    assert a.seeds == [0, 2] and a.tables == {"1", "noise"} and a.data == Path("x/data")
    assert a.report == Path("x/results.md")
    assert StudyOptions().tables == set(tables.TABLES) == tables.parse_tables("all")
    assert a.command() == ("meddet study run --out x --data x/data --config cpu-crop "
                           "--device cpu --seeds 0,2 --tables 1,noise --jobs 1 "
                           "--threads-per-job 1")
    b = StudyOptions(out="x", teacher_epochs=40, extra=["--max-iters", "2"], bench_iters=50)
    assert b.command().endswith("--tables all --jobs 1 --threads-per-job 1 --teacher-epochs 40 "
                                "--bench-iters 50 --extra '--max-iters 2'")


def test_cli_unknown_table(capsys):
    assert cli(["study", "plan", "--tables", "9"]) == 2
    assert "unknown table(s) ['9']" in capsys.readouterr().err
    with pytest.raises(MedDetError, match="not a comma list of integers"):
        tables.parse_seeds("0,x")
    with pytest.raises(MedDetError, match="must be at least 1"):
        StudyOptions(jobs=0)


def test_cli_only(capsys, monkeypatch, tmp_path):
    def no_work(*a, **k):
        raise AssertionError("--only with an unknown id must not start any work")

    monkeypatch.setattr(runner, "Runner", no_work)
    monkeypatch.setattr(runner.subprocess, "run", no_work)
    out = tmp_path / "o"
    # --only is checked before any data generation or training
    assert cli(["study", "run", "--only", "nope", "--seeds", "0", "--tables", "5",
                "--out", str(out)]) == 2
    assert "no such row(s) ['nope']" in capsys.readouterr().err
    assert cli(["study", "plan", "--only", "meddet-s1", "--seeds", "0"]) == 2
    assert not out.exists()
    # a known id filters the plan
    assert cli(["study", "plan", "--only", "fusion-sum,meddet-s0", "--seeds", "0",
                "--tables", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["meddet-s0", "fusion-sum"]


def test_teacher_epochs_reach_only_the_teachers_and_win_over_extra(tmp_path):
    rows = tables.plan([0], {"5"}, teacher_epochs=60)
    teachers = [r for r in rows if r.id.startswith("teacher-")]
    assert all(r.argv[-2:] == ["--epochs", "60"] for r in teachers)
    assert all("--epochs" not in r.argv for r in rows if not r.id.startswith("teacher-"))
    a = StudyOptions(out=tmp_path, extra=["--epochs", "2"])
    train = runner.Runner(a, rows).steps(teachers[0])[0]
    # the row's own --epochs 60 comes after --extra's --epochs 2, so the CLI takes 60
    assert train.index("2") < len(train) - train[::-1].index("60") - 1
    assert train[train.index("--out") - 2:train.index("--out")] == ["--epochs", "60"]


def test_a_row_cut_by_the_deadline_reports_every_invocation(tmp_path, monkeypatch):
    """A real subprocess cut at the deadline, then finished by a second runner: the row's
    seconds are the sum of both invocations and its commands start with the one that began it."""
    import sys
    import time

    row = tables.Row("r-s0", "r", ["train", "--x"], group="r")
    args = StudyOptions(out=tmp_path, jobs=1)
    first = runner.Runner(args, [row])
    first.deadline = time.time() + 1.0  # started at once, cut a second later
    monkeypatch.setattr(first, "steps", lambda r: [
        [sys.executable, "-c", "import time; time.sleep(60)", "first"]])
    first.run()
    segs = json.loads((tmp_path / "runs" / "r-s0" / "partial.json").read_text())
    assert len(segs) == 1 and segs[0]["command"] == "import time; time.sleep(60) first"
    assert not first.done("r-s0") and 1.0 <= segs[0]["seconds"] < 30

    second = runner.Runner(args, [row])
    test = tmp_path / "runs" / "r-s0" / "test.json"
    code = f"import json, time; time.sleep(1.2); open({str(test)!r}, 'w').write(json.dumps({{'mAP50': 0.5}}))"
    monkeypatch.setattr(second, "steps", lambda r: [[sys.executable, "-c", code, "second"]])
    assert second.run() == 0
    info = json.loads((tmp_path / "runs" / "r-s0" / "row.json").read_text())
    assert info["test"] == {"mAP50": 0.5}
    assert info["commands"][0] == "import time; time.sleep(60) first"
    assert info["commands"][1].endswith("second") and len(info["commands"]) == 2
    assert len(info["segments"]) == 2 and info["segments"][1] >= 1.2
    assert info["seconds"] == pytest.approx(sum(info["segments"]), abs=0.11)


def test_a_finished_row_without_its_sweep_is_only_evaluated_again(tmp_path, monkeypatch):
    """A row recorded before its table swept it: only the evaluation runs (no training step,
    the sweep flag on it), and its record keeps its training seconds and commands."""
    import sys

    row = tables.Row("alone-meddet-s1", "a", ["pretrain-teacher", "--model", "meddet"],
                     seed=1, group="alone-meddet", noise=True)
    out = tmp_path / "s"
    _write_row(out, row.id, row.group, 1, _test_json(0.8), seconds=1234.0)
    r = runner.Runner(StudyOptions(out=out, jobs=1), [row])
    assert r.done(row.id) and r.unswept(row.id)
    (step,) = r.steps(row)  # the evaluation alone
    assert step[3] == "eval" and step[-2:] == ["--noise-sweep", tables.NOISE_SPEC]

    run = out / "runs" / row.id
    swept = _test_json(0.8, sweep=[(None, 0.8), ("rician:5", 0.7)])
    code = f"open({str(run / 'test.json')!r}, 'w').write({json.dumps(swept)!r})"
    monkeypatch.setattr(r, "steps", lambda _row: [[sys.executable, "-c", code, "eval"]])
    assert r.run() == 0
    info = json.loads((run / "row.json").read_text())
    assert info["test"]["noise_sweep"][1] == {"noise": "rician:5", "mAP50": 0.7}
    assert info["seconds"] == 1234.0 and "segments" not in info
    assert info["commands"][:2] == [f"meddet train {row.id}", f"meddet eval {row.id}"]
    assert info["commands"][2].endswith("eval") and info["sweep_seconds"] >= 0
    assert not (run / "partial.json").exists()
    # swept now: nothing left to run, and a row its table does not sweep is never re-evaluated
    assert not runner.Runner(StudyOptions(out=out, jobs=1), [row]).unswept(row.id)
    plain = tables.Row("plain-gfl_effb0-s0", "p", ["pretrain-teacher"], group="plain-gfl_effb0")
    _write_row(out, plain.id, plain.group, 0, _test_json(0.7))
    assert not runner.Runner(StudyOptions(out=out, jobs=1), [plain]).unswept(plain.id)


def test_bench_rows_run_on_their_own_device_and_a_cpu_study_skips_the_gpu_ones(
        tmp_path, monkeypatch):
    import sys

    rows = [r for r in tables.plan([0], {"2"}) if r.kind == "bench"]
    assert [r.id for r in rows] == ["bench-cpu", "bench-cuda-b1", "bench-cuda-b32"]
    gpu = runner.Runner(StudyOptions(out=tmp_path / "g", device="cuda"), rows)
    for r, dev, batch in zip(rows, ("cpu", "cuda", "cuda"), ("1", "1", "32")):
        (cmd,) = gpu.steps(r)
        assert cmd[cmd.index("--device") + 1] == dev and cmd[cmd.index("--batch-size") + 1] \
            == batch, r.id
    lines: list[str] = []
    cpu = runner.Runner(StudyOptions(out=tmp_path / "c"), rows, echo=lines.append)
    started: list[str] = []

    def steps(r):
        started.append(r.id)
        out = cpu.runs / r.id / "bench.json"
        return [[sys.executable, "-c", f"open({str(out)!r}, 'w').write('{{}}')"]]

    monkeypatch.setattr(cpu, "steps", steps)
    assert cpu.run() == 0  # skipped, not failed
    assert started == ["bench-cpu"] and cpu.done("bench-cpu")
    assert not cpu.done("bench-cuda-b1") and not cpu.failed
    assert [ln.split(None, 1)[1] for ln in lines if "skip" in ln] == [
        "skip   bench-cuda-b1 (a GPU row: run the study with --device cuda)",
        "skip   bench-cuda-b32 (a GPU row: run the study with --device cuda)"]
    info = json.loads((cpu.runs / "bench-cpu" / "row.json").read_text())
    assert info["device"] == "cpu" and info["bench"] == {}


def test_table2_puts_the_cpu_and_gpu_benches_side_by_side(fake_study):
    def bench(dev, name, batch, r50, med):
        return {"device": dev, "device_name": name, "batch_size": batch, "img_size": 512,
                "threads": 2, "models": [
                    {"name": "gfl_r50", "params_m": 32.0, "gflops": 50.0, "fps": r50},
                    {"name": "meddet", "params_m": 8.0, "gflops": 30.0, "fps": med}]}

    rows = records.load_rows(fake_study)
    # given GPU first: the table still puts the CPU column first
    for rid, b in (("bench-cuda-b32", bench("cuda", "H200", 32, 400.0, 1000.0)),
                   ("bench-cpu", bench("cpu", "EPYC", 1, 2.0, 8.0))):
        rows[rid] = {"id": rid, "group": rid, "seed": 0, "seconds": 1.0, "commands": [],
                     "device": b["device"], "bench": b}
    text = report.render(rows, {})
    t2 = text.split("## Table II:")[1].split("\n## ")[0]
    assert "| ours recall@.5 | FPS CPU b1 | FPS GPU b32 | params M (ours / paper) |" in t2
    assert _line(t2, "| GFL-R50 |").endswith("| 2.00 | 400.00 | 32.00 / 32.32 | 50.00 / 50.21 |")
    assert _line(t2, "| MedDet |").endswith("| 8.00 | 1000.00 | 8.00 / 10.42 | 30.00 / 31.69 |")
    assert _line(t2, "| MedDet-lite (ours) |").endswith("| — | — | — / — | — / — |")
    assert ("FPS CPU b1: `meddet bench` on EPYC, 512 px, batch 1, 2 threads, images per "
            "second from the median latency (relative to GFL-R50: meddet 4.00×).") in t2
    assert "FPS GPU b32: `meddet bench` on H200, 512 px, batch 32" in t2
    assert "(relative to GFL-R50: meddet 2.50×)" in t2
    c2 = _line(text.split("## Table I:")[0], "| 2.")
    assert ("cost against GFL-R50: 25% of its parameters, 60% of its GFLOPs, 4.00× its FPS on "
            "EPYC (batch 1), 2.50× its FPS on H200 (batch 32)") in c2


def test_learning_curves_one_panel_per_group_and_named_in_the_report(fake_study, tmp_path):
    rows = records.load_rows(fake_study)
    assert not noise.plot_curves(rows, tmp_path / "none.png")  # no row has a curve
    assert not (tmp_path / "none.png").exists()
    assert "Learning curves of every row" not in report.render(rows, {})
    rows["meddet-s0"]["val_curve"] = [[100, 0.2, 0.1], [200, 0.5, 0.3]]
    rows["meddet-s1"]["val_curve"] = [[100, 0.3, 0.1], [200, 0.6, 0.3]]
    rows["plain-gfl_mbv2-s2"]["val_curve"] = [[100, 0.1, 0.0]]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    real = plt.subplots

    def spy(*a, **k):
        fig, axes = real(*a, **k)
        made.append(axes)
        return fig, axes

    import unittest.mock

    with unittest.mock.patch.object(plt, "subplots", spy):
        assert noise.plot_curves(rows, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = made[0]
    assert axes.shape == (1, 2)  # two groups with a curve: meddet, plain-gfl_mbv2
    assert [a.get_title() for a in axes.flat] == ["meddet", "plain-gfl_mbv2"]
    assert [len(a.get_lines()) for a in axes.flat] == [2, 1]  # one line per seed
    assert list(axes[0, 0].get_lines()[1].get_ydata()) == [30.0, 60.0]
    assert "Learning curves of every row" in report.render(rows, {})


def test_spread_line_names_three_seed_rows_wider_than_two_points(fake_study):
    rows = records.load_rows(fake_study)
    # meddet 80/82/84 (sd 2.0: at the limit), plain 70/71/72 (sd 1.0); single-seed rows ignored
    assert report._spread_line(rows) == ("Seed spread: 2 of 2 rows with three or more seeds "
                                         "have a test mAP50 standard deviation of at most 2 "
                                         "points.\n")
    rows["meddet-s2"]["test"]["mAP50"] = 0.86  # 80/82/86: sd 3.06
    assert report._spread_line(rows).endswith("at most 2 points; above it: meddet (3.1).\n")
    assert "Seed spread: 1 of 2 rows" in report.render(rows, {})
    assert report._spread_line({k: v for k, v in rows.items() if k.endswith("-s0")}) is None


def test_resumed_without_a_partial_is_unchanged(tmp_path):
    info = {"seconds": 5.0, "commands": ["a"]}
    assert runner.resumed(info, tmp_path / "partial.json") is info


def test_teacher_sets_group_rows_by_the_teachers_that_taught_them():
    a = {"teacher-gfl_r50": 0.939, "teacher-gfl_r101": 0.996, "teacher-gfl_r152": 0.932}
    b = {"teacher-gfl_r50": 0.937, "teacher-gfl_r101": 0.999, "teacher-gfl_r152": 0.992}
    rows = {"x-s0": {"teachers": a}, "y-s0": {"teachers": b}, "z-s1": {"teachers": a},
            "plain-s0": {}}
    lines = report.teacher_sets(rows)
    assert "2 set(s)" in lines[0] and "test mAP of GFL-R50 / GFL-R101 / GFL-R152" in lines[0]
    # these records predate the teachers' mAP, and the study holds no teacher rows: —
    assert lines[1:] == ["  * set 1: — / — / — (mAP50 93.9 / 99.6 / 93.2): x-s0, z-s1",
                         "  * set 2: — / — / — (mAP50 93.7 / 99.9 / 99.2): y-s0"]
    assert report.teacher_sets({"plain-s0": {}}) == []


def test_a_distilled_row_records_its_teachers(tmp_path, monkeypatch):
    import sys

    t = tmp_path / "runs" / "teacher-gfl_r50"
    t.mkdir(parents=True)
    (t / "row.json").write_text(json.dumps({"id": "teacher-gfl_r50",
                                            "test": {"mAP": 0.5, "mAP50": 0.75}}))
    row = tables.Row("d-s0", "d", ["distill"], needs=("teacher-gfl_r50",), group="d")
    run = runner.Runner(StudyOptions(out=tmp_path), [row])
    test = tmp_path / "runs" / "d-s0" / "test.json"
    code = f"import json; open({str(test)!r}, 'w').write(json.dumps({{'mAP50': 0.25}}))"
    monkeypatch.setattr(run, "steps", lambda r: [[sys.executable, "-c", code]])
    assert run.run() == 0
    info = json.loads((tmp_path / "runs" / "d-s0" / "row.json").read_text())
    assert info["teachers"] == {"teacher-gfl_r50": 0.75} and "segments" not in info
    assert info["teachers_mAP"] == {"teacher-gfl_r50": 0.5} and "overrides" not in info


def test_taught_apart():
    a, b = {"teacher-gfl_r50": 0.9}, {"teacher-gfl_r50": 0.8}
    rows = {"x-s0": {"group": "x", "teachers": a}, "y-s0": {"group": "y", "teachers": a},
            "z-s0": {"group": "z", "teachers": b}, "p-s0": {"group": "p"}}
    assert not verdicts.taught_apart(rows, "x", "y")
    assert verdicts.taught_apart(rows, "x", "z")
    assert not verdicts.taught_apart(rows, "x", "p")  # a row without teachers: nothing to compare


# The committed studies: the live one on the default phantom, and the archived first study on
# phantom v1 (records, report and plots under docs/archive/). Each: (records, report, the
# fewest rows it holds, the plots its report writes).
COMMITTED = [("docs/results", "docs/results.md", 3,
              ["results_curves.png", "results_noise.png", "results_noise_alone.png"]),
             ("docs/archive/results-v1", "docs/archive/results-v1.md", 58,
              ["results_noise.png", "results_noise_alone.png"])]


@pytest.mark.parametrize("out,dest,least,_plots", COMMITTED)
def test_the_committed_report_is_rendered_from_the_committed_rows(out, dest, least, _plots):
    """docs/results.md is exactly what `meddet study report docs/results --out
    docs/results.md` makes from docs/results/ (and the archived study likewise): no figure in
    it was edited by hand, and none of the records behind it is missing."""
    out, dest = Path(out), Path(dest)
    a = StudyOptions(out=out, report=dest)
    planned = [r.id for r in tables.plan(a.seeds, a.tables, a.teacher_epochs)]
    rows = records.load_rows(ROOT / out)
    assert len(rows) >= least and all("test" in r or "bench" in r for r in rows.values())
    text = report.render(rows, records.read_meta(ROOT / out), planned, source=(out, dest))
    assert text == (ROOT / dest).read_text()


def test_the_live_study_is_on_the_default_phantom_and_the_archive_says_it_is_not():
    from meddet.data.generate import DEFAULT_PHANTOM

    assert records.read_meta(ROOT / "docs/results")["phantom"] == DEFAULT_PHANTOM
    assert records.read_meta(ROOT / "docs/archive/results-v1")["phantom"] == "v1"
    assert "These rows were measured on the synthetic phantom `v1`" in \
        (ROOT / "docs/archive/results-v1.md").read_text()
    assert "These rows were measured" not in (ROOT / "docs/results.md").read_text()


@pytest.mark.parametrize("out,dest,_least,plots", COMMITTED)
def test_cli_report_rebuilds_the_committed_report(out, dest, _least, plots, tmp_path,
                                                  monkeypatch, capsys):
    """`meddet study report docs/results --out docs/results.md`, run on a copy of the records,
    writes exactly the committed report and its plots; a folder without rows is an error."""
    import shutil

    shutil.copytree(ROOT / out, tmp_path / out)
    monkeypatch.chdir(tmp_path)
    assert cli(["study", "report", out, "--out", dest]) == 0
    assert (tmp_path / dest).read_text() == (ROOT / dest).read_text()
    assert sorted(p.name for p in (tmp_path / dest).parent.joinpath("img").iterdir()) == plots
    (tmp_path / "empty").mkdir()
    assert cli(["study", "report", "empty"]) == 2
    assert "holds no runs/<row>/row.json" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "results.md").exists()


def test_the_committed_records_describe_hardware_not_history():
    diary = re.compile(r"session|lent (H100|H200)|issue [0-9]", re.IGNORECASE)
    files = [ROOT / "docs" / "results.md", *sorted((ROOT / "docs" / "results").rglob("*.json")),
             ROOT / "docs" / "archive" / "results-v1.md",
             *sorted((ROOT / "docs" / "archive" / "results-v1").rglob("*.json"))]
    assert len(files) > 62
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files
            for m in diary.finditer(p.read_text())]
    assert hits == []


def test_cli_help_lists_the_subcommands(capsys):
    assert cli(["study", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("plan", "run", "report"):
        assert re.search(rf"^\W*{name}\s", out, re.MULTILINE), name


def test_run_study_runs_records_and_reports(tmp_path, monkeypatch):
    """run_study end to end with a stand-in training command: the row is finished, the
    invocation recorded in study.json, the report written, a second call runs nothing."""
    import sys

    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)  # an existing dataset: nothing is generated
    opts = StudyOptions(out=tmp_path / "s", data=data, tables={"5"}, seeds=[0],
                        only="teacher-gfl_r50", teacher_epochs=3)

    def steps(self, row):
        run = self.runs / row.id
        # a teacher row is swept under noise: a record without its sweep would run again
        sweep = [(None, 0.6), ("rician:5", 0.5)]
        files = {"test.json": json.dumps(_test_json(0.6, sweep=sweep)),
                 "config.yaml": "train:\n  batch_size: 4\n",
                 "results.csv": "epoch,iter,loss,mAP,mAP50,seconds\n1,10,1.0,,,30.0\n"
                                "2,20,0.9,0.2,0.4,45.5\n"}
        code = "".join(f"open({str(run / n)!r}, 'w').write({t!r});" for n, t in files.items())
        return [[sys.executable, "-c", code]]

    monkeypatch.setattr(runner.Runner, "steps", steps)
    lines: list[str] = []
    res = runner.run_study(opts, echo=lines.append)
    row = json.loads((opts.out / "runs" / "teacher-gfl_r50" / "row.json").read_text())
    assert (row["train_seconds"], row["train_images"]) == (75.5, 80)
    assert row["val_curve"] == [[20, 0.4, 0.2]]
    assert (res.planned, res.finished, res.failed, res.stopped, res.exit_code) == (
        ["teacher-gfl_r50"], ["teacher-gfl_r50"], [], [], 0)
    assert [ln.split()[1:3] for ln in lines] == [["start", "teacher-gfl_r50"],
                                                 ["done", "teacher-gfl_r50"]]
    meta = records.read_meta(opts.out)
    assert [c["command"] for c in meta["invocations"]] == [opts.command()]
    assert meta["teacher_epochs"] == 3 and meta["seeds"] == [0]
    # the machine by its CPU model and cores, not the bare architecture
    import torch

    from meddet.device import device_name
    cpu = f"{os.cpu_count()}-core {device_name(torch.device('cpu'))} (CPU)"
    assert meta["device_name"] == meta["invocations"][0]["device_name"] == cpu
    text = (opts.out / "results.md").read_text()
    assert "| GFL-R50 | 85.6 | 30.0 (n=1) | 60.0 (n=1) |" in text
    assert "rows finished: 1 of 1 planned" in text

    def no_work(*a, **k):
        raise AssertionError("a finished row must not run again")

    monkeypatch.setattr(runner.subprocess, "Popen", no_work)
    again = runner.run_study(opts, echo=lines.append)
    assert again.finished == ["teacher-gfl_r50"] and len(lines) == 2
    assert len(records.read_meta(opts.out)["invocations"]) == 2


def test_training_cost_column_and_distillation_overhead(fake_study):
    """Seconds per training image per group and device, and the distilled rows' cost against
    the plain student's on the same device; records without the fields show —."""
    rows = records.load_rows(fake_study)
    text = report.render(rows, {})
    assert "| **MedDet** (3 teachers) | 85.5 | 41.0 ± 1.0 (n=3) | 82.0 ± 2.0 (n=3) |" in text
    assert _line(text, "| **MedDet** (3 teachers)").endswith("| 110 s | — |")
    assert "Training cost per image against" not in text
    for rid, secs, imgs in (("meddet-s0", 300.0, 1000), ("meddet-s1", 500.0, 1000),
                            ("plain-gfl_mbv2-s0", 200.0, 1000)):
        rows[rid].update(train_seconds=secs, train_images=imgs)
    rows["plain-gfl_mbv2-s1"].update(train_seconds=10.0, train_images=1000, device="cuda")
    assert verdicts.group_cost(rows, "meddet") == {"cpu": 0.4}
    assert verdicts.group_cost(rows, "plain-gfl_mbv2") == {"cpu": 0.2, "cuda": 0.01}
    assert verdicts.overhead(rows, "meddet", "plain-gfl_mbv2") == {"cpu": 2.0}
    text = report.render(rows, {})
    assert _line(text, "| **MedDet** (3 teachers)").endswith("| 0.4 s |")
    assert _line(text, "| GFL mbv2 |").endswith("| 0.2 s (cpu) / 0.01 s (cuda) |")
    assert ("Training cost per image against GFL-MobileNetV2 trained alone on the same device "
            "(the distillation overhead; rows sharing a machine slow each other, so this is "
            "indicative): MedDet 2.00× (cpu).") in text


def test_report_says_when_its_rows_came_from_an_older_phantom(tmp_path):
    import json

    from meddet.data.generate import DEFAULT_PHANTOM
    from meddet.study.records import data_phantom
    from meddet.study.report import render

    ann = tmp_path / "data" / "annotations"
    ann.mkdir(parents=True)
    (ann / "train.json").write_text(json.dumps({"info": {"generator": {"phantom": "v9"}}}))
    assert data_phantom(tmp_path / "data") == "v9"
    (ann / "train.json").write_text(json.dumps({"info": {"generator": {"seed": 0}}}))
    assert data_phantom(tmp_path / "data") == "v1"  # written before the field existed
    (ann / "train.json").write_text(json.dumps({"info": {}}))
    assert data_phantom(tmp_path / "data") is None  # not a synthetic set
    assert data_phantom(tmp_path / "missing") is None

    old = render({}, {"config": "cpu-small", "phantom": "v1"})
    assert "measured on the synthetic phantom `v1`" in old and DEFAULT_PHANTOM in old
    same = render({}, {"config": "cpu-small", "phantom": DEFAULT_PHANTOM})
    assert "measured on the synthetic phantom" not in same


# --------------------------------------------------------------------------------------------
# the optional ImageNet table, per-row config overrides, the teachers under each table


def test_plan_imagenet_rows_and_their_from_scratch_twins():
    rows = tables.plan([0, 1], {"imagenet"})
    teachers = ["teacher-gfl_r50", "teacher-gfl_r101", "teacher-gfl_r152"]
    per_seed = ["plain-gfl_mbv2-s{}", "meddet-s{}", "imagenet-plain-gfl_mbv2-s{}",
                "imagenet-meddet-s{}"]
    assert [r.id for r in rows] == teachers + [i.format(s) for s in (0, 1) for i in per_seed]
    by_id = {r.id: r for r in rows}
    for s in (0, 1):
        # the same command as its from-scratch twin, with the backbone from ImageNet
        for twin in (f"plain-gfl_mbv2-s{s}", f"meddet-s{s}"):
            a, b = by_id[f"imagenet-{twin}"], by_id[twin]
            assert a.argv == b.argv and a.needs == b.needs and a.checkpoint == b.checkpoint
            assert a.overrides == {"model": {"pretrained": "imagenet"}} and b.overrides == {}
            assert a.group == f"imagenet-{b.group}" and a.seed == s
    assert by_id["imagenet-meddet-s1"].needs == tuple(teachers)
    # optional: not in `all`, whose plan is unchanged; named, or added to all
    assert "imagenet" not in tables.parse_tables("all")
    assert tables.parse_tables("all,imagenet") == set(tables.TABLES) | {"imagenet"}
    assert not any(r.overrides or r.id.startswith("imagenet-")
                   for r in tables.plan([0, 1, 2], set(tables.TABLES)))
    assert StudyOptions(tables={"imagenet", "5"}).command().count("--tables 5,imagenet ") == 1
    assert "--tables all,imagenet " in StudyOptions(
        tables=tables.parse_tables("all,imagenet")).command()
    assert tables.tables_arg(set(tables.TABLES)) == "all"
    with pytest.raises(MedDetError, match=r"unknown table\(s\) \['imagenet1'\]"):
        tables.parse_tables("imagenet1")


def test_cli_plan_shows_a_rows_config_overrides(capsys):
    assert cli(["study", "plan", "--seeds", "0", "--tables", "imagenet",
                "--only", "plain-gfl_mbv2-s0,imagenet-plain-gfl_mbv2-s0"]) == 0
    plain, inet = capsys.readouterr().out.splitlines()
    assert plain.endswith("meddet pretrain-teacher --model gfl_mbv2 --seed 0")
    assert inet.endswith("meddet pretrain-teacher --model gfl_mbv2 --seed 0  "
                         "[config + model.pretrained=imagenet]")


def test_a_row_with_overrides_trains_with_its_own_config_file(tmp_path):
    import yaml

    from meddet.config import load_config

    rows = {r.id: r for r in tables.plan([0], {"imagenet"})}
    run = runner.Runner(StudyOptions(out=tmp_path, config="cpu-small"), list(rows.values()))
    plain = run.steps(rows["plain-gfl_mbv2-s0"])[0]
    assert plain[plain.index("--config") + 1] == "cpu-small"
    assert not (tmp_path / "runs" / "plain-gfl_mbv2-s0").exists()
    train = run.steps(rows["imagenet-meddet-s0"])[0]
    path = tmp_path / "runs" / "imagenet-meddet-s0" / "study-config.yaml"
    assert train[train.index("--config") + 1] == str(path)
    # the study's config (cpu-small's own keys) with the override on top, nothing else
    doc = yaml.safe_load(path.read_text())
    base = yaml.safe_load((ROOT / "meddet" / "configs" / "cpu-small.yaml").read_text())
    assert doc == {**base, "model": {"pretrained": "imagenet"}}
    assert load_config(str(path)) == load_config("cpu-small", {"model": {"pretrained": "imagenet"}})
    # an override the schema rejects fails that row when it starts, not the whole study
    bad = tables.Row("bad-s0", "bad", ["pretrain-teacher"], group="bad",
                     overrides={"model": {"pretrainedd": "imagenet"}})
    lines: list[str] = []
    run = runner.Runner(StudyOptions(out=tmp_path), [bad], echo=lines.append)
    assert run.run() == 1 and run.failed == {"bad-s0"}
    assert "FAIL   bad-s0 (unknown key 'model.pretrainedd'" in lines[0]


def test_the_imagenet_row_fails_at_run_time_with_one_line_without_weights(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    """Planning needs no weights; the row's own command fails (exit 2, one line) when they are
    neither cached nor downloadable (the autouse fixture makes every download fail)."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    rows = {r.id: r for r in tables.plan([0], {"imagenet"})}
    run = runner.Runner(StudyOptions(out=tmp_path / "s", data=tiny_dataset),
                        list(rows.values()))
    train = run.steps(rows["imagenet-plain-gfl_mbv2-s0"])[0]
    assert train[:3] == runner.meddet_argv()
    assert cli([*train[3:], "--max-iters", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: no ImageNet weights (MobileNet_V2_Weights.IMAGENET1K_V1) for "
                          "backbone 'mobilenet_v2'") and "\n" not in err


def _teacher_row(out: Path, name: str, ckpt: Path, map_: float, map50: float) -> None:
    """A finished teacher row (a stand-in checkpoint and its record), as a study run leaves it."""
    import shutil

    d = out / "runs" / f"teacher-{name}"
    d.mkdir(parents=True)
    shutil.copy(ckpt, d / "best.pt")
    (d / "row.json").write_text(json.dumps({
        "id": f"teacher-{name}", "label": name, "seed": 0, "group": f"teacher-{name}",
        "seconds": 1.0, "commands": ["stand-in"], "device": "cpu", "config": "cpu-small",
        "test": {"mAP": map_, "mAP50": map50}}))


@pytest.mark.slow
def test_toy_study_end_to_end_with_an_imagenet_row(tiny_dataset, tiny_teachers, tmp_path,
                                                   monkeypatch):
    """`meddet study run --tables imagenet` for real at toy size (the two ImageNet rows only, to
    stay short): MedDet with an ImageNet-initialised student, distilled from the study's
    (stand-in) teachers, and the ImageNet GFL-MobileNetV2, from a fake
    torchvision MobileNetV2 file in TORCH_HOME; the report puts mAP first, mAP50 beside it and
    names the teachers."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the subprocesses cannot reach out
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    fake = torchvision.models.mobilenet_v2().state_dict()
    fake["features.0.0.weight"].fill_(0.125)  # recognisable, and frozen under ImageNet init
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(fake, cache / "mobilenet_v2-b0353104.pth")

    out = tmp_path / "study"
    for (name, m, m50), ckpt in zip((("gfl_r50", 0.10, 0.30), ("gfl_r101", 0.20, 0.40),
                                     ("gfl_r152", 0.25, 0.45)), tiny_teachers):
        _teacher_row(out, name, ckpt, m, m50)
    opts = StudyOptions(out=out, data=tiny_dataset, tables={"imagenet"}, seeds=[0],
                        only="imagenet-plain-gfl_mbv2-s0,imagenet-meddet-s0", jobs=2,
                        extra=["--max-iters", "1", "--epochs", "1", "--img-size", "64",
                               "--batch-size", "2", "--eval-every", "1"])
    lines: list[str] = []
    res = runner.run_study(opts, echo=lines.append)
    assert res.failed == [] and res.exit_code == 0, lines
    assert res.planned == ["imagenet-plain-gfl_mbv2-s0", "imagenet-meddet-s0"]
    assert sorted(res.finished) == sorted(res.planned)  # two rows at a time: either order

    runs = records.load_rows(out)
    for rid, ckpt in (("imagenet-plain-gfl_mbv2-s0", "best.pt"),
                      ("imagenet-meddet-s0", "student.pt")):
        state = torch.load(out / "runs" / rid / ckpt, map_location="cpu",
                           weights_only=True)["model"]
        # The stem is frozen under ImageNet initialisation: it still holds the file's values.
        assert torch.equal(state["backbone.features.0.0.weight"], fake["features.0.0.weight"])
        assert runs[rid].get("overrides") == {"model": {"pretrained": "imagenet"}}
    assert "--config OUT/runs/imagenet-meddet-s0/study-config.yaml" in \
        runs["imagenet-meddet-s0"]["commands"][0]
    for rid in ("imagenet-meddet-s0",):  # taught by the study's teachers
        assert runs[rid]["teachers"] == {"teacher-gfl_r50": 0.30, "teacher-gfl_r101": 0.40,
                                         "teacher-gfl_r152": 0.45}
        assert runs[rid]["teachers_mAP"] == {"teacher-gfl_r50": 0.10, "teacher-gfl_r101": 0.20,
                                             "teacher-gfl_r152": 0.25}

    for rid in res.planned:  # the learning curve is recorded: one validation, at iteration 1
        curve = runs[rid]["val_curve"]
        assert len(curve) == 1 and curve[0][0] == 1
        assert curve[0][1] == runs[rid]["best_val_mAP50"]
        assert runs[rid]["last_quarter"] is None  # one validation cannot tell

    text = res.report.read_text()
    sec = text.split("## ImageNet initialisation")[1].split("\n## ")[0]
    assert _line(sec, "| row |") == ("| row | paper mAP | ours mAP | ours mAP50 | "
                                     "protrusion AP50 | wall-clock per run | "
                                     "training s per image |")
    for label, rid in (("GFL mbv2, ImageNet-initialised", "imagenet-plain-gfl_mbv2-s0"),
                       ("MedDet, ImageNet-initialised student", "imagenet-meddet-s0")):
        t = runs[rid]["test"]
        assert _line(sec, f"| {label} |").startswith(
            f"| {label} | {80.8 if 'GFL' in label else 85.5} | {100 * t['mAP']:.1f} (n=1) | "
            f"{100 * t['mAP50']:.1f} (n=1) |")
    assert ("Teachers: one set taught every distilled row here: GFL-R50 / GFL-R101 / GFL-R152 "
            "test mAP 10.0 / 20.0 / 25.0 (mAP50 30.0 / 40.0 / 45.0).") in sec
    assert _line(sec, "| GFL mbv2, from scratch |").count("not run") == 3
    assert _line(sec, "| MedDet, from scratch |").count("not run") == 3
    claims = _line(sec, "Claims: ")
    # The from-scratch twins were left out of this run: no verdict without both sides.
    assert claims == ("Claims: ImageNet vs scratch, GFL-MobileNetV2: not run; ImageNet vs "
                      "scratch, MedDet: not run.")


def test_teachers_line_names_one_set_or_says_they_differ(fake_study):
    a = {"teacher-gfl_r50": 0.9, "teacher-gfl_r101": 0.95, "teacher-gfl_r152": 0.97}
    a_map = {"teacher-gfl_r50": 0.4, "teacher-gfl_r101": 0.5, "teacher-gfl_r152": 0.55}
    rows = records.load_rows(fake_study)
    for rid in ("meddet-s0", "meddet-s1", "meddet-s2"):
        rows[rid] = {**rows[rid], "teachers": a, "teachers_mAP": a_map}
    rows["fusion-sum"] = {**rows["fusion-sum"], "teachers": a, "teachers_mAP": a_map}
    text = report.render(rows, {})
    t5 = text.split("## Table V:")[1].split("\n## ")[0]
    assert ("Teachers: one set taught every distilled row here: GFL-R50 / GFL-R101 / GFL-R152 "
            "test mAP 40.0 / 50.0 / 55.0 (mAP50 90.0 / 95.0 / 97.0).") in t5
    assert "[different teacher sets]" not in t5
    # fusion-sum retrained elsewhere: Table V says so in one line, the header lists both sets
    b = {**a, "teacher-gfl_r50": 0.8}
    rows["fusion-sum"] = {**rows["fusion-sum"], "teachers": b, "teachers_mAP": a_map}
    text = report.render(rows, {})
    t5 = text.split("## Table V:")[1].split("\n## ")[0]
    assert _line(t5, "Teachers: ") == (
        "Teachers: **2 different sets** taught the distilled rows here (sets 1, 2 of the header: "
        "teachers retrained on different machines), so a difference between rows of different "
        "sets mixes the method with its teachers.")
    assert "LWFF vs sum: " in t5 and "[different teacher sets]" in t5
    t1 = text.split("## Table I:")[1].split("\n## ")[0]  # only MedDet distilled in Table I
    assert "Teachers: one set (set 2 of the header) taught every distilled row here" in t1
    assert report.teachers_line(rows, report.in_groups(rows, ["plain-gfl_mbv2"])) is None


def test_teacher_scores_fill_in_mAP_from_the_studys_own_teacher_row():
    """Records written before the teachers' mAP was stored take it from the teacher row that
    has exactly the recorded mAP50 (the same training), else leave it unknown."""
    own = {"teacher-gfl_r50": {"test": {"mAP": 0.378, "mAP50": 0.937}}}
    row = {"teachers": {"teacher-gfl_r50": 0.937, "teacher-gfl_r101": 0.999}}
    assert verdicts.teacher_scores(own, row) == {
        "teacher-gfl_r50": (pytest.approx(37.8), pytest.approx(93.7)),
        "teacher-gfl_r101": (None, pytest.approx(99.9))}
    other = {"teachers": {"teacher-gfl_r50": 0.935}}  # retrained elsewhere: not that row
    assert verdicts.teacher_scores(own, other)["teacher-gfl_r50"][0] is None
    stored = {**other, "teachers_mAP": {"teacher-gfl_r50": 0.3}}
    assert verdicts.teacher_scores(own, stored)["teacher-gfl_r50"][0] == pytest.approx(30.0)


def test_records_without_the_headline_metric_still_report(tmp_path):
    """A record older than mAP: its cells show —, its verdicts say so and keep mAP50."""
    out = tmp_path / "study"
    for s, v in enumerate((0.80, 0.82, 0.84)):
        _write_row(out, f"meddet-s{s}", "meddet", s, _test_json(v))
    for s, v in enumerate((0.70, 0.71, 0.72)):
        t = _test_json(v)
        del t["mAP"]
        _write_row(out, f"plain-gfl_mbv2-s{s}", "plain-gfl_mbv2", s, t)
    text = report.render(records.load_rows(out), {})
    assert _line(text, "| GFL mbv2 |").startswith("| GFL mbv2 | 80.8 | — | 71.0 ± 1.0 (n=3) |")
    assert ("MedDet vs GFL-MobileNetV2: — (mAP not recorded) · mAP50: reproduced (+11.0 > "
            "spread 2.0)") in text
    assert _line(text, "| GFL mbv2_1.4 |").count("not run") == 3  # never ran: not run, not —


def test_claim_verdict_needs_every_comparison():
    cv = verdicts.claim_verdict
    assert cv(["reproduced", "reproduced"]) == ("reproduced", "2 of 2 comparisons reproduced")
    assert cv(["reproduced", "not resolved", "reproduced"]) == (
        "not resolved", "2 of 3 comparisons reproduced, 1 not resolved")
    # one contradicted comparison contradicts the claim, one missing leaves it not run
    assert cv(["reproduced", "contradicted"])[0] == "contradicted"
    assert cv(["contradicted", "reproduced", "not run"]) == (
        "not run", "1 of 3 comparisons reproduced, 1 contradicted, 1 not run yet")
    assert cv(["not run"] * 5) == ("not run", "none of its 5 comparisons measured yet")
    assert cv(["not run"]) == ("not run", "not measured yet")
    assert [verdicts.verdict_kind(v) for v in (
        "**reproduced** (+1.0 > spread 0.5)", "**contradicted** (-2.0, beyond spread 1.0)",
        "not resolved (+0.1, within spread 1.0)", "+0.3: one seed, spread unknown, not "
        "assessable", "not run")] == ["reproduced", "contradicted", "not resolved",
                                      "not resolved", "not run"]


def test_claim_kinds_and_readme_summary(fake_study):
    _write_row(fake_study, "teacher-gfl_r50", "teacher-gfl_r50", 0, _test_json(0.83))
    _write_row(fake_study, "teacher-gfl_r101", "teacher-gfl_r101", 0, _test_json(0.90))
    rows = records.load_rows(fake_study)
    kinds = report.claim_kinds(rows)
    assert list(kinds) == ["1", "2", "3", "4", "5", "6"]
    # MedDet mAP 41.0 ± 1.0 vs plain 35.5 ± 0.5: reproduced; the KD rows never ran
    assert kinds["1"] == ["reproduced", "not run", "not run", "not run", "not run"]
    # vs R50 41.5: within 1.0; vs R101 45.0: less accurate beyond it; R152 and the bench missing
    assert kinds["2"] == ["reproduced", "contradicted", "not run", "not run"]
    assert kinds["5"] == ["contradicted", "not run"]  # sum 43.0 beats MedDet by 2.0 > 1.0
    text = report.readme_summary(rows)
    assert text.count("\n") == 8 and text.startswith("| claim of the paper |")
    assert _line(text, "| 2.").endswith(
        "| not run (1 of 4 comparisons reproduced, 1 contradicted, 2 not run yet) |")
    assert "| 6. nmODE² makes the detector more robust to MRI noise | not run (none of its 2 " \
        "comparisons measured yet) |" in text


def test_update_readme_rewrites_only_its_block(fake_study, tmp_path, capsys):
    rows = records.load_rows(fake_study)
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{report.README_START}\nold table\n{report.README_END}\n"
                      "after\n")
    new = report.update_readme(readme, rows)
    assert new == readme.read_text() == (f"# T\n\nbefore\n{report.README_START}\n"
                                         f"{report.readme_summary(rows)}{report.README_END}\n"
                                         "after\n")
    assert report.update_readme(readme, rows) == new  # idempotent
    bare = tmp_path / "BARE.md"
    bare.write_text("# no block\n")
    with pytest.raises(MedDetError, match="no study summary block"):
        report.update_readme(bare, rows)
    # the CLI checks the block before writing anything
    assert cli(["study", "report", str(fake_study), "--out", str(tmp_path / "r.md"),
                "--readme", str(bare)]) == 2
    assert "no study summary block" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists() and bare.read_text() == "# no block\n"
    assert cli(["study", "report", str(fake_study), "--out", str(tmp_path / "r.md"),
                "--readme", str(readme)]) == 0
    assert (tmp_path / "r.md").is_file() and readme.read_text() == new


def test_the_readme_states_the_committed_studys_verdicts():
    """README.md's table of the claims is `meddet study report docs/results --readme
    README.md` of the committed records, not text edited by hand."""
    text = (ROOT / "README.md").read_text()
    block = text.split(report.README_START + "\n")[1].split(report.README_END)[0]
    assert block == report.readme_summary(records.load_rows(ROOT / "docs/results"))


def _meta(out: Path, phantom: str, calls: list[str]) -> None:
    records.write_json(out / "study.json", {"phantom": phantom, "config": f"c-{out.name}",
                                            "invocations": [{"command": c} for c in calls]})


def test_merge_records_replaces_rows_and_prunes_their_invocations(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    _write_row(old, "plain-s0", "plain", 0, _test_json(0.7))
    _write_row(old, "bench", "bench", 0, _test_json(0.1))
    _meta(old, "v2", ["meddet study run --only plain-s0", "meddet study run --only bench",
                      "by hand"])
    _write_row(new, "plain-s0", "plain", 0, _test_json(0.8))
    _write_row(new, "meddet-s0", "meddet", 0, _test_json(0.9))
    _meta(new, "v2", ["meddet study run --only plain-s0,meddet-s0"])
    assert cli(["study", "merge", str(new), str(old)]) == 0
    out = capsys.readouterr().out
    assert "added 1: meddet-s0" in out and "replaced 1: plain-s0" in out
    rows = records.load_rows(old)
    assert sorted(rows) == ["bench", "meddet-s0", "plain-s0"]
    assert rows["plain-s0"]["test"]["mAP50"] == 0.8
    meta = records.read_meta(old)
    # the invocation of the replaced row alone is gone; the bench's, the unparsable one and
    # the new one stay, in that order; the schedule fields are the new study's
    assert [c["command"] for c in meta["invocations"]] == [
        "meddet study run --only bench", "by hand", "meddet study run --only plain-s0,meddet-s0"]
    assert meta["config"] == "c-new"
    # merging again changes nothing
    assert records.merge_records(new, old) == {"added": [], "replaced": [],
                                               "unchanged": ["meddet-s0", "plain-s0"]}
    assert len(records.read_meta(old)["invocations"]) == 3
    # another phantom, or a folder without rows: one line, exit 2, nothing written
    other = tmp_path / "v1"
    _write_row(other, "plain-s1", "plain", 1, _test_json(0.5))
    _meta(other, "v1", [])
    assert cli(["study", "merge", str(other), str(old)]) == 2
    assert "phantom 'v1'" in capsys.readouterr().err
    assert not (old / "runs" / "plain-s1").exists()
    (tmp_path / "empty").mkdir()
    assert cli(["study", "merge", str(tmp_path / "empty"), str(old)]) == 2
    assert "holds no runs/<row>/row.json" in capsys.readouterr().err


def test_a_row_placed_from_a_finished_run_says_how_it_was_trained(tmp_path, monkeypatch):
    """A linked teacher row only resumes (nothing left to train) and evaluates: its record
    keeps how the run was trained, from the run's config.yaml, and the Rows table says it."""
    import sys

    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    opts = StudyOptions(out=tmp_path / "s", data=data, tables={"5"}, seeds=[0],
                        only="teacher-gfl_r50", teacher_epochs=3)
    cfg = ("command: pretrain-teacher\ndata:\n  img_size: 256\n  augmentation:\n    crop: 128\n"
           "model:\n  name: gfl_r50\ntrain:\n  epochs: 160\n  batch_size: 8\n  cpu_amp: true\n"
           "  seed: 0\n")

    def steps(self, row):
        run = self.runs / row.id
        files = {"test.json": json.dumps(_test_json(0.6)), "config.yaml": cfg}
        code = "".join(f"open({str(run / n)!r}, 'w').write({t!r});" for n, t in files.items())
        return [[sys.executable, "-c", code, "--resume"]]

    monkeypatch.setattr(runner.Runner, "steps", steps)
    runner.run_study(opts, echo=lambda _: None)
    row = json.loads((opts.out / "runs" / "teacher-gfl_r50" / "row.json").read_text())
    assert row["trained_with"] == {"command": "pretrain-teacher", "model": "gfl_r50",
                                   "epochs": 160, "max_iters": None, "batch_size": 8,
                                   "img_size": 256, "crop": 128, "cpu_amp": True, "seed": 0}
    text = report.render(records.load_rows(opts.out), {})
    assert ("| teacher-gfl_r50 | cpu |" in text and "(trained before: pretrain-teacher gfl_r50, "
            "160 epochs of batch 8, 128 px crops of 256 px images, bfloat16 autocast, seed 0) "
            "`") in text


def test_regenerate_lines_name_the_studys_device_and_flags(fake_study):
    rows = records.load_rows(fake_study)
    cpu = report.render(rows, {"config": "cpu-crop", "device": "cpu", "extra": ["--cpu-amp"],
                               "teacher_epochs": 160})
    assert ("Regenerate: `meddet study run --config cpu-crop --tables 1 --seeds 0,1,2 --device "
            "cpu --teacher-epochs 160 --extra --cpu-amp` (finished rows") in cpu
    # a study spread over devices, or none recorded: the GPU command, no flags
    for meta in ({"config": "c", "device": "cuda and cpu", "extra": []}, {}):
        assert "--tables 1 --seeds 0,1,2 --device cuda` (finished" in report.render(rows, meta)


def test_spread_line_says_when_seeds_trained_in_different_arithmetic(tmp_path):
    out = tmp_path / "s"
    for s, v in enumerate((0.70, 0.80, 0.76)):
        _write_row(out, f"plain-gfl_mbv2-s{s}", "plain-gfl_mbv2", s, _test_json(v))
    p = out / "runs" / "plain-gfl_mbv2-s0" / "row.json"
    row = json.loads(p.read_text())
    row["commands"][0] += " --cpu-amp"
    row["device"] = "cuda"
    p.write_text(json.dumps(row))
    line = report._spread_line(records.load_rows(out))
    # mAP50 70 / 80 / 76: sd 5.0
    assert line.endswith("above it: plain-gfl_mbv2 (5.0; 1 of 3 seeds trained in bfloat16, the "
                         "others in float32; its seeds ran on different devices).\n")
    # a linked run that recorded bfloat16 counts as bfloat16 too
    assert report._bf16({"commands": ["meddet x --resume R"], "trained_with": {"cpu_amp": True}})
    assert not report._bf16({"commands": ["meddet x --cpu-ampere"]})
