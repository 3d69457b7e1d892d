"""`meddet distill` end to end: every method, resume, frozen teachers, bad input."""

import json

import pytest
import torch

from meddet.cli import main
from meddet.engine import load_checkpoint, make_meta, save_checkpoint

# gfl_mbv2 students and teachers at 128 px keep each run to a few seconds on 2 CPU cores.
FAST = ["--student", "gfl_mbv2", "--img-size", "128", "--batch-size", "1", "--config",
        "cpu-small", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _teachers(paths):
    return ",".join(str(p) for p in paths)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["meddet", "mgd", "ld", "fgd", "none"])
def test_each_method_two_iterations_and_eval(method, tiny_dataset, tiny_teachers, tmp_path,
                                             capsys):
    out = tmp_path / method
    args = ["distill", "--teachers", _teachers(tiny_teachers), "--data", str(tiny_dataset),
            "--method", method, "--max-iters", "2", "--out", str(out), *FAST]
    assert main(args) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    if method in ("mgd", "ld", "fgd"):
        # the teacher with the best recorded val mAP50 (0.3) is used and named
        assert "uses one teacher" in text and "teacher1.pt" in text
    assert "time split" in text
    for name in ("last.pt", "best.pt", "student.pt", "results.csv", "config.yaml"):
        assert (out / name).is_file(), name
    student = load_checkpoint(out / "student.pt")
    assert set(student) <= {"model", "meta", "metrics", "epoch", "iter"}
    assert student["meta"]["kind"] == "detector" and student["meta"]["model_name"] == "gfl_mbv2"
    # distillation-only modules never end up in the student checkpoint
    assert not any(k.startswith(("aligner", "fusion", "generator", "discriminator", "align",
                                 "generation", "gc_")) for k in student["model"])
    last = load_checkpoint(out / "last.pt")
    assert ("distill" in last.get("extra", {})) == (method != "none")
    assert ("disc_optimizer" in last.get("extra", {})) == (method == "meddet")
    metrics = tmp_path / f"{method}.json"
    assert main(["eval", str(out / "student.pt"), "--data", str(tiny_dataset), "--split", "test",
                 "--out", str(tmp_path / f"eval_{method}"), "--json", str(metrics)]) == 0
    assert "mAP50" in json.loads(metrics.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["meddet", "mgd", "fgd", "ld"])
def test_lite_student_with_narrower_neck_distills(method, tiny_dataset, tiny_teachers, tmp_path,
                                                  capsys):
    # meddet_lite's neck has 128 channels, the teachers' 256: every method must bridge that.
    out = tmp_path / method
    args = ["distill", "--teachers", _teachers(tiny_teachers), "--data", str(tiny_dataset),
            "--method", method, "--max-iters", "1", "--out", str(out), *FAST,
            "--student", "meddet_lite"]
    assert main(args) == 0, capsys.readouterr().err
    student = load_checkpoint(out / "student.pt")
    assert student["meta"]["model_name"] == "meddet_lite"
    assert student["model"]["neck.fpn_convs.0.weight"].shape[0] == 128


@pytest.mark.slow
def test_resume_continues_distillation_state(tiny_dataset, tiny_teachers, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["distill", "--teachers", _teachers(tiny_teachers), "--data", str(tiny_dataset),
            "--method", "meddet", "--fusion", "concat", "--teacher-img-size", "160", *FAST]
    assert main([*base, "--max-iters", "1", "--out", str(out)]) == 0
    first = load_checkpoint(out / "last.pt")
    assert first["iter"] == 1
    # teachers come from the checkpoint when not given again
    summary = tmp_path / "summary.json"
    assert main(["distill", "--resume", str(out), "--max-iters", "2", "--json", str(summary)]) \
        == 0, capsys.readouterr().err
    assert json.loads(summary.read_text())["iters"] == 2
    second = load_checkpoint(out / "last.pt")
    assert second["iter"] == 2
    d1, d2 = first["extra"]["distill"], second["extra"]["distill"]
    assert d1.keys() == d2.keys()
    assert any(not torch.equal(d1[k], d2[k]) for k in d1 if k.startswith("discriminator"))


@pytest.mark.slow
def test_teachers_stay_frozen_and_discriminator_follows_the_schedule(tiny_dataset,
                                                                     tiny_teachers):
    from meddet.config import load_config
    from meddet.distill.trainer import build_distill_trainer

    # 4 iterations: 2 of warm-up from 0.5x, then a x0.1 step at iteration 3
    cfg = load_config("cpu-small", {
        "data": {"root": str(tiny_dataset), "img_size": 128},
        "train": {"batch_size": 1, "max_iters": 4, "device": "cpu", "warmup_iters": 2,
                  "warmup_ratio": 0.5},
        "distill": {"method": "meddet", "student": "gfl_mbv2", "disc_lr": 1e-4}})
    run = build_distill_trainer(cfg, None, teachers=tiny_teachers)
    run.trainer.scheduler.milestones = [3]  # the step, wherever the epochs put it
    saved = [load_checkpoint(p)["model"] for p in tiny_teachers]
    disc_opt, student_opt = run.step.method.disc_optimizer, run.trainer.optimizer
    seen, disc_step = [], disc_opt.step

    def recording_step(*args, **kwargs):
        g = student_opt.param_groups[0]
        seen.append((disc_opt.param_groups[0]["lr"], g["lr"] / g["initial_lr"]))
        return disc_step(*args, **kwargs)

    disc_opt.step = recording_step
    run.trainer.train()
    assert run.trainer.iter == 4
    for teacher, state in zip(run.teachers, saved):
        assert not teacher.model.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
        now = teacher.model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in state.items())  # BN buffers included
    assert run.step.seconds["teacher"] > 0 and run.step.seconds["disc"] > 0
    # D's rate is its base rate times the student's schedule factor: warm-up, then the step
    assert [round(f, 6) for _, f in seen] == [0.5, 0.75, 1.0, 0.1]
    assert [lr for lr, _ in seen] == pytest.approx([5e-5, 7.5e-5, 1e-4, 1e-5], rel=1e-9)
    assert disc_opt.param_groups[0]["initial_lr"] == 1e-4


def _one_line_exit_2(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_exit_2(tiny_dataset, tiny_teachers, tmp_path, capsys):
    base = ["distill", "--data", str(tiny_dataset), "--max-iters", "1", *FAST]
    t = _teachers(tiny_teachers)
    err = _one_line_exit_2(capsys, [*base, "--teachers", t, "--sigma", "0.8", "--tau", "0.5",
                                    "--out", str(tmp_path / "a")])
    assert "sigma + tau" in err
    err = _one_line_exit_2(capsys, ["distill", "--data", str(tiny_dataset), "--teachers", t,
                                    "--student", "resnet9000", "--out", str(tmp_path / "b")])
    assert "unknown student" in err
    err = _one_line_exit_2(capsys, [*base, "--out", str(tmp_path / "c")])
    assert "needs teacher checkpoints" in err

    not_detector = tmp_path / "state.pt"
    save_checkpoint(not_detector, {"model": {}, "meta": make_meta(
        model_name="gfl_mbv2", num_classes=2, class_names=["protrusion", "non-protrusion"],
        img_size=128, kind="discriminator")})
    err = _one_line_exit_2(capsys, [*base, "--teachers", f"{t},{not_detector}",
                                    "--out", str(tmp_path / "d")])
    assert "not a detector" in err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    err = _one_line_exit_2(capsys, [*base, "--teachers", str(garbage), "--out",
                                    str(tmp_path / "e")])
    assert "garbage.pt" in err

    other = tmp_path / "other_classes.pt"
    ckpt = load_checkpoint(tiny_teachers[0])
    ckpt["meta"] = dict(ckpt["meta"], class_names=["disc", "bulge"])
    save_checkpoint(other, ckpt)
    err = _one_line_exit_2(capsys, [*base, "--teachers", f"{t},{other}", "--out",
                                    str(tmp_path / "f")])
    assert "classes" in err and "other_classes.pt" in err
