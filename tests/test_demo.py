"""`meddet demo`: the quick run end to end through the CLI, plus the cheap pieces."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from meddet.cli import main
from meddet.demo import (
    PLAIN_STUDENT,
    PLANS,
    TEACHERS,
    check_students,
    default_students,
    estimate_seconds,
    format_tables,
)
from meddet.errors import MedDetError


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--pretrained", "none", "--out", str(out), "--json",
                 "-"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)           # --json -: JSON alone on stdout
    human = captured.err
    assert "Expected time: about" in human and "pipeline check" in human
    assert "Table I" in human and "Table II" in human
    assert "Initial weights: random for every model (--pretrained none)" in human

    students = ["meddet"]  # the quick plan's (and the CPU plan's) default
    names = [*TEACHERS, PLAIN_STUDENT, *students]
    assert set(result["models"]) == set(names)
    for name in names:
        m = result["models"][name]
        assert 0.0 <= m["test"]["mAP50"] <= 1.0 and 0.0 <= m["test"]["recall"] <= 1.0
        assert m["bench"]["params_m"] > 0 and m["bench"]["gflops_512"] > 0
        assert m["bench"]["fps"] > 0
    # GFLOPs at 512 px match the paper's Table II within 5 % (the docs/table2.md result).
    assert result["models"]["meddet"]["bench"]["gflops_512"] == pytest.approx(31.69, rel=0.05)
    assert [r["model"] for r in result["table1"]] == [PLAIN_STUDENT, *TEACHERS, *students]
    assert [r["model"] for r in result["table2"]] == [*TEACHERS, *students]
    steps = ["synth", *(f"pretrain {t}" for t in TEACHERS),
             *(f"distill {s}" for s in students), f"train {PLAIN_STUDENT}", "evaluate",
             "benchmark", "report"]
    assert list(result["seconds"]) == steps == list(result["expected_s"])

    for f in ("results.md", "results.json", "curves.png", "preview.png", "preview_plain.png"):
        assert (out / f).is_file()
    assert (out / "students" / "meddet" / "student.pt").is_file()
    assert all((out / "teachers" / t / "best.pt").is_file() for t in TEACHERS)
    md = (out / "results.md").read_text()
    assert "Table I" in md and "Table II" in md and "pipeline check" in md
    assert "(curves.png)" in md and "(preview.png)" in md and "(preview_plain.png)" in md
    assert result["preview"]["model"] == "meddet"
    assert result["preview"]["plain"]["model"] == PLAIN_STUDENT
    assert json.loads((out / "results.json").read_text())["plan"]["name"] == "quick"


def test_gpu_plan_is_the_studys_recipe():
    from meddet.config import load_config

    gpu, crop = PLANS["gpu"], load_config("cpu-crop")
    assert (gpu.img_size, gpu.crop, gpu.batch_size) == (crop.data.img_size,
                                                         crop.data.augmentation.crop,
                                                         crop.train.batch_size)
    assert (gpu.lr, gpu.warmup_iters, tuple(gpu.lr_steps), gpu.optimizer) == (
        crop.train.lr, crop.train.warmup_iters, tuple(crop.train.lr_steps), crop.train.optimizer)
    assert gpu.student_epochs == gpu.teacher_epochs == crop.train.epochs
    assert gpu.eval_every == crop.train.eval_every
    # Every plan trains with the recipe's model options and warm-up start.
    from pathlib import Path

    from meddet.demo.steps import _train_cfg

    for plan in PLANS.values():
        cfg = _train_cfg(plan, Path("d"), model="meddet", epochs=1, seed=0, device="cpu")
        assert cfg.model.model_dump(exclude={"name", "pretrained"}) == crop.model.model_dump(
            exclude={"name", "pretrained"})
        assert cfg.train.warmup_ratio == crop.train.warmup_ratio
        assert cfg.data.augmentation.crop == plan.crop


def test_estimates_cover_every_step_and_fit_the_budgets():
    quick, full = estimate_seconds("quick", ["meddet"]), estimate_seconds("full", ["meddet"])
    assert list(quick) == list(full) and all(v > 0 for v in full.values())
    # The CPU plan at the reference speeds (2 idle cores, measured) fits the 15 minutes.
    assert sum(quick.values()) < 3 * 60 and sum(full.values()) < 15 * 60
    assert estimate_seconds("full") == full  # the CPU plan's default students: MedDet only
    # The GPU plan distils both students (its speeds are not measured yet: no budget test).
    assert {"distill meddet", "distill meddet_lite"} <= set(estimate_seconds("gpu"))
    assert sum(estimate_seconds("full", ["meddet", "gfl_mbv2_1.4"]).values()) > sum(full.values())
    # Training cost follows the crop, evaluation the whole image.
    p = PLANS["full"]
    bigger = estimate_seconds(dataclasses.replace(p, crop=2 * p.crop))
    assert bigger["train gfl_mbv2"] > 1.5 * full["train gfl_mbv2"]
    assert bigger["pretrain gfl_r152"] > 3 * full["pretrain gfl_r152"]  # follows the area
    assert bigger["evaluate"] == full["evaluate"]


def test_students_are_validated():
    assert check_students(None) == default_students() and default_students()[0] == "meddet"
    for bad in ([], ["nope"], ["meddet", "meddet"], ["gfl_r50"]):
        with pytest.raises(MedDetError):
            check_students(bad)


def test_bad_students_flag_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["demo", "--quick", "--students", "no_such_model", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "no_such_model" in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing made before the input was checked


@pytest.mark.parametrize("flags, words", [
    (["--pretrained", "sometimes"], ["--pretrained", "sometimes", "auto, none or imagenet"]),
    pytest.param(["--device", "cuda"], ["--device cuda", "CUDA is not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
])
def test_bad_device_or_pretrained_is_one_line_exit_2(tmp_path, capsys, flags, words):
    out = tmp_path / "never"
    assert main(["demo", "--quick", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_initial_weights_say_which_models_got_imagenet(tmp_path, monkeypatch):
    """`auto` with only MobileNetV2's file in torchvision's cache and no network: the two
    MobileNetV2 students get ImageNet weights, the ResNet teachers random ones, with the reason;
    `none` gives random weights to all without looking."""
    import torchvision

    from meddet.demo.run import initial_weights
    from meddet.models import pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(pretrained, "_FAILED_DOWNLOADS", {})
    calls = []

    def offline(url, dst):
        calls.append(url)
        raise OSError("no network")

    monkeypatch.setattr(pretrained, "_download", offline)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), cache / "mobilenet_v2-b0353104.pth")
    got = initial_weights(["gfl_r50", "gfl_mbv2", "meddet"], "auto")
    assert got["gfl_mbv2"] == got["meddet"] == "imagenet"
    assert got["gfl_r50"].startswith("random: ") and "no network" in got["gfl_r50"]
    assert initial_weights(["gfl_r50", "gfl_mbv2"], "none") == {"gfl_r50": "random",
                                                                "gfl_mbv2": "random"}
    assert len(calls) == 1  # only ResNet-50's file was looked for on the network, once
    with pytest.raises(MedDetError, match="no ImageNet weights"):
        initial_weights(["gfl_r50"], "imagenet")


def test_tables_from_a_result():
    metrics = {"mAP": 0.25, "mAP50": 0.5, "AR100": 0.375, "recall": 0.75}
    bench = {"params_m": 10.0, "gflops_512": 31.7, "fps": 12.0}
    result = {
        "plan": {**PLANS["quick"].__dict__},
        "students": ["meddet"],
        "models": {n: {"test": metrics, "bench": bench}
                   for n in [*TEACHERS, PLAIN_STUDENT, "meddet"]},
        "bench": {"device": "cpu", "threads": 2, "flops": "fvcore"},
        "seconds": {"synth": 1.0},
        "elapsed_s": 1.0,
        "machine": {"cpu": "x", "threads": 2, "load_start": "0.1"},
    }
    md = format_tables(result)
    assert "| MedDet (distilled student) | 0.250 | 0.500 | 0.375 | 0.750 |" in md
    assert "| model | mAP | mAP50 | AR100 | recall@.5 |" in md
    assert "| GFL ResNet50 (teacher) | 0.250 | 0.750 | 12.0 | 10.00 | 31.70 | 32.32 | 50.21 |" in md


def test_curves_draw_one_loss_and_one_map50_line_per_model(monkeypatch, tmp_path):
    import meddet.engine.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    history = {"gfl_r50": [{"epoch": 1, "loss": 2.0, "loss_qfl": 1.0, "mAP50": 0.1},
                           {"epoch": 2, "loss": 1.0, "loss_qfl": 0.5, "mAP50": 0.3}],
               "meddet": [{"epoch": 1, "loss": 3.0, "mAP50": None},
                          {"epoch": 2, "loss": 1.5, "mAP50": 0.2}]}
    plots.plot_training_curves(history, tmp_path / "curves.png")
    plots.plot_training_curves(history["gfl_r50"], tmp_path / "one.png")
    (ax_l, ax_m), (one_l, one_m) = (f.axes for f in figures)
    assert [ln.get_label() for ln in ax_l.lines] == ["gfl_r50", "meddet"]
    assert [list(ln.get_ydata()) for ln in ax_l.lines] == [[2.0, 1.0], [3.0, 1.5]]
    # Epochs without a validation are left out rather than drawn as zero.
    assert [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax_m.lines] == [
        ([1, 2], [0.1, 0.3]), ([2], [0.2])]
    assert ax_m.get_ylabel() == "val mAP50"
    # One run keeps every loss term and every metric it has.
    assert [ln.get_label() for ln in one_l.lines] == ["loss", "loss_qfl"]
    assert [ln.get_label() for ln in one_m.lines] == ["val mAP50"]


def _fake_teacher_step(made: list, template):
    """A stand-in for the demo's training step: copies a small checkpoint as the run's best.pt
    and records which model it "trained"."""
    import shutil

    def train(name, role, epochs, *, out, **_):
        run = out / ("teachers" if role == "teacher" else "students") / name
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, run / "last.pt")
        (run / "results.csv").write_text(f"epoch,iter,loss\n1,1,{len(made)}\n")
        made.append(name)
        return {"role": role, "run_dir": str(run), "checkpoint": str(run / "last.pt"),
                "history": [{"epoch": 1, "loss": float(len(made))}], "iters": 1}
    return train


def test_a_second_run_reuses_the_cached_teachers(tmp_path, monkeypatch, tiny_teachers):
    from meddet.demo import cache, run, steps

    monkeypatch.setenv("MEDDET_CACHE", str(tmp_path / "cache"))
    made: list[str] = []
    monkeypatch.setattr(steps, "train", _fake_teacher_step(made, tiny_teachers[0]))
    # Everything after the teachers is the quick pipeline's business; stop there.
    monkeypatch.setattr(steps, "distill_student", lambda *a, **k: (_ for _ in ()).throw(
        MedDetError("stop after the teachers")))
    plan = dataclasses.replace(PLANS["quick"], name="tiny", max_iters=3)
    for _ in range(2):
        with pytest.raises(MedDetError, match="stop after the teachers"):
            run.run_demo(tmp_path / f"run{_}", plan=plan, pretrained="none")
    # Trained once, then taken from the cache, into the second run's own folder.
    assert made == list(TEACHERS)
    entry = run.cached_teachers(plan, seed=0, device="cpu", pretrained="none")
    assert entry is not None and entry.parent == tmp_path / "cache" / "teachers"
    for t in TEACHERS:
        restored = tmp_path / "run1" / "teachers" / t
        assert (restored / "best.pt").is_file() and (restored / "results.csv").read_text() == (
            entry / t / "results.csv").read_text()
    from meddet.engine.checkpoint import load_checkpoint
    slim = load_checkpoint(tmp_path / "run1" / "teachers" / "gfl_r50" / "best.pt")
    assert "optimizer" not in slim and slim["meta"]["model_name"] == "gfl_mbv2"
    # A different seed, teacher schedule or --pretrained is another entry; a student-only
    # change is the same one.
    assert run.cached_teachers(plan, seed=1, device="cpu", pretrained="none") is None
    assert run.cached_teachers(dataclasses.replace(plan, teacher_epochs=2), seed=0,
                               device="cpu", pretrained="none") is None
    assert run.cached_teachers(plan, seed=0, device="cpu", pretrained="auto") is None
    assert run.cached_teachers(dataclasses.replace(plan, student_epochs=5), seed=0,
                               device="cpu", pretrained="none") == entry
    # reuse_teachers=False trains again and replaces the entry; the quick plan keeps nothing.
    with pytest.raises(MedDetError, match="stop after the teachers"):
        run.run_demo(tmp_path / "run2", plan=plan, pretrained="none", reuse_teachers=False)
    assert made == [*TEACHERS, *TEACHERS]
    assert (entry / "gfl_r50" / "results.csv").read_text().endswith(",3\n")
    assert run.cached_teachers("quick", seed=0, device="cpu", pretrained="none") is None
    assert sorted(p.name for p in (tmp_path / "cache" / "teachers").iterdir()) == [entry.name]
    # An entry made from other data is not used.
    assert cache.restore(entry, tmp_path / "x", fingerprint="other",
                         initial_weights={t: "random" for t in TEACHERS}) is None
    assert not (tmp_path / "x").exists()


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    from meddet.demo.cache import cache_root

    monkeypatch.setenv("MEDDET_CACHE", str(tmp_path / "m"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "m"
    monkeypatch.delenv("MEDDET_CACHE")
    assert cache_root() == tmp_path / "x" / "meddet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "meddet"


def test_cached_teachers_cost_seconds_in_the_estimate():
    fresh = estimate_seconds("full", ["meddet"])
    cached = estimate_seconds("full", ["meddet"], cached_teachers=True)
    assert all(cached[f"pretrain {t}"] <= 5 for t in TEACHERS)
    assert {k: v for k, v in cached.items() if not k.startswith("pretrain")} == {
        k: v for k, v in fresh.items() if not k.startswith("pretrain")}
    assert sum(cached.values()) == pytest.approx(
        sum(fresh.values()) - sum(fresh[f"pretrain {t}"] - cached[f"pretrain {t}"]
                                  for t in TEACHERS))
