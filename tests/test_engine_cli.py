"""`meddet pretrain-teacher` and `meddet eval` end to end on a tiny synthetic dataset (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from meddet.cli import main
from meddet.engine.checkpoint import load_checkpoint, make_meta, save_checkpoint

SMALL = ["--model", "gfl_mbv2", "--config", "default", "--img-size", "64", "--batch-size", "2",
         "--workers", "0"]


def train(data, out, *extra) -> int:
    return main(["pretrain-teacher", *SMALL, "--data", str(data), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    """The issue's smoke run: 1 epoch capped at 3 iterations (2 per epoch here)."""
    out = tmp_path_factory.mktemp("runs") / "r"
    # The command, at 64 px to keep the suite fast (128 px is checked by hand).
    assert main(["pretrain-teacher", "--model", "gfl_mbv2", "--data", str(tiny_dataset),
                 "--epochs", "1", "--max-iters", "3", "--img-size", "64", "--batch-size", "2",
                 "--out", str(out)]) == 0
    return out


def test_pretrain_leaves_the_run_directory(run):
    for name in ("config.yaml", "results.csv", "last.pt", "best.pt", "curves.png", "train.log"):
        assert (run / name).is_file(), name
    header, row = (run / "results.csv").read_text().splitlines()
    cols = header.split(",")
    assert cols[:3] == ["epoch", "iter", "loss"]
    assert {"loss_qfl", "loss_dfl", "loss_giou", "lr", "mAP", "mAP50", "recall", "seconds"} <= set(cols)
    assert row.startswith("1,2,")
    # The positives' mean IoU, a fraction, after the loss terms and before lr.
    values = dict(zip(cols, row.split(",")))
    assert cols.index("pos_iou") < cols.index("lr") and 0 <= float(values["pos_iou"]) <= 1
    ckpt = load_checkpoint(run / "last.pt")
    meta = ckpt["meta"]
    assert meta["model_name"] == "gfl_mbv2" and meta["img_size"] == 64
    assert meta["class_names"] == ["protrusion", "non-protrusion"]
    assert {"model", "optimizer", "scheduler", "epoch", "metrics", "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and "mAP50" in ckpt["metrics"]
    assert "epoch 1/1" in (run / "train.log").read_text()


def test_eval_prints_json_and_writes_artifacts(run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "ev"
    # --score-thr 0 so that the barely trained model reports detections to score.
    assert main(["eval", str(run / "last.pt"), "--data", str(tiny_dataset), "--split", "test",
                 "--json", "-", "--out", str(out), "--score-thr", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"mAP", "mAP50", "mAP75", "AR100", "recall", "per_class", "num_images",
                        "class_agnostic", "checkpoint", "split"}
    assert set(res["class_agnostic"]) == {"mAP", "mAP50", "recall"}
    assert set(res["per_class"]) == {"protrusion", "non-protrusion"}
    assert res["num_images"] == 2 and res["split"] == "test"
    assert json.loads((out / "predictions.json").read_text())  # non-trivial detections
    for name in ("predictions.json", "pr_curve.png", "confusion_matrix.png", "metrics.json"):
        assert (out / name).is_file(), name
    # The saved predictions re-evaluate to the very same numbers.
    assert main(["eval", "--predictions", str(out / "predictions.json"), "--data",
                 str(tiny_dataset), "--split", "test", "--json", "-", "--out",
                 str(tmp_path / "ev2")]) == 0
    res2 = json.loads(capsys.readouterr().out)
    for k in ("mAP", "mAP50", "mAP75", "AR100", "recall", "per_class"):
        assert res2[k] == res[k], k


def test_eval_noise_is_reproducible_and_sweeps(run, tiny_dataset, tmp_path, capsys):
    args = ["eval", str(run / "last.pt"), "--data", str(tiny_dataset), "--split", "test",
            "--json", "-", "--score-thr", "0.0", "--img-size", "64"]
    assert main([*args, "--noise", "rician:5", "--out", str(tmp_path / "a")]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["noise"] == "rician:5"
    assert main([*args, "--noise-sweep", "rician:5", "--out", str(tmp_path / "s")]) == 0
    res = json.loads(capsys.readouterr().out)
    clean, level = res["noise_sweep"]
    assert (clean["noise"], level["noise"]) == ("clean", "rician:5")
    # The same spec and seed corrupt the images identically: the very same metrics.
    assert {k: level[k] for k in ("mAP", "mAP50", "recall")} == \
        {k: noisy[k] for k in ("mAP", "mAP50", "recall")}
    assert clean["mAP50"] == res["mAP50"]
    assert (tmp_path / "s" / "noise_sweep.png").is_file()
    assert len((tmp_path / "s" / "noise_sweep.csv").read_text().splitlines()) == 3


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2_with_one_line(run, tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = str(tiny_dataset)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    assert main(["eval", str(plain), "--data", data]) == 2
    assert "not a meddet checkpoint" in one_error_line(capsys)

    ck = load_checkpoint(run / "last.pt")
    ck["meta"] = make_meta(**{**{k: ck["meta"][k] for k in ("model_name", "num_classes",
                                                            "img_size", "model_overrides")},
                              "class_names": ["cat", "dog"]})
    wrong = save_checkpoint(tmp_path / "wrong.pt", ck)
    assert main(["eval", str(wrong), "--data", data, "--out", str(tmp_path / "e")]) == 2
    assert "do not match the dataset's categories" in one_error_line(capsys)

    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image_id": 12345, "category_id": 1, "bbox": [0, 0, 5, 5],
                                  "score": 0.5}]))
    assert main(["eval", "--predictions", str(preds), "--data", data, "--split", "test"]) == 2
    assert "image ids not in this split" in one_error_line(capsys)

    assert main(["eval", str(run / "last.pt"), "--data", data, "--split", "nope"]) == 2
    assert "no 'nope' split" in one_error_line(capsys)
    assert main(["pretrain-teacher", "--model", "gfl_mbv2", "--data", str(tmp_path / "none")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["pretrain-teacher", "--model", "gfl_nope", "--data", data]) == 2
    assert "unknown model" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()  # no empty run directory left behind
    assert main(["eval", str(run / "last.pt"), "--data", data, "--noise", "salt:3"]) == 2
    assert "unknown noise kind" in one_error_line(capsys)


def test_resume_ends_with_the_same_weights(tiny_dataset, tmp_path):
    # 4 train images, batch 2: 2 iterations per epoch.
    assert train(tiny_dataset, tmp_path / "straight", "--epochs", "1") == 0
    # Interrupted after iteration 1 (mid-epoch: the data order and RNG must be restored),
    # then resumed to the end.
    assert train(tiny_dataset, tmp_path / "cut", "--epochs", "1", "--max-iters", "1") == 0
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iter"] == 1
    assert main(["pretrain-teacher", "--resume", str(tmp_path / "cut"), "--max-iters", "2"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["iter"] == b["iter"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    rows_a = (tmp_path / "straight" / "results.csv").read_text().splitlines()
    rows_b = (tmp_path / "cut" / "results.csv").read_text().splitlines()
    # Same epochs, loss means (over the whole epoch, across the interruption) and lr.
    assert [r.split(",")[:7] for r in rows_a] == [r.split(",")[:7] for r in rows_b]


def test_torchrun_two_gloo_processes(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "meddet", "pretrain-teacher",
           *SMALL, "--batch-size", "1", "--data", str(tiny_dataset), "--epochs", "1",
           "--max-iters", "2", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["trainer"]["world_size"] == 2
    assert ckpt["trainer"]["steps_per_rank"] == [2, 2]  # both ranks stepped
    written = sorted(p.name for p in out.iterdir())
    assert written == ["best.pt", "config.yaml", "curves.png", "last.pt", "results.csv", "train.log"]
    assert "steps per rank [2, 2]" in (out / "train.log").read_text()


def test_several_models_get_one_run_directory_each(tiny_dataset, tmp_path):
    assert main(["pretrain-teacher", "--model", "gfl_mbv2,gfl_shufflenetv2", "--data",
                 str(tiny_dataset), "--img-size", "64", "--batch-size", "2", "--max-iters", "1",
                 "--out", str(tmp_path)]) == 0
    for name in ("gfl_mbv2", "gfl_shufflenetv2"):
        assert load_checkpoint(tmp_path / name / "last.pt")["meta"]["model_name"] == name


def test_cpu_amp_flag_is_recorded_and_logged(tiny_dataset, tmp_path):
    assert train(tiny_dataset, tmp_path / "b", "--max-iters", "1", "--cpu-amp") == 0
    assert "cpu_amp: true" in (tmp_path / "b" / "config.yaml").read_text()
    assert "bfloat16 autocast" in (tmp_path / "b" / "train.log").read_text()
    assert torch.isfinite(torch.tensor(float(
        (tmp_path / "b" / "results.csv").read_text().splitlines()[1].split(",")[2])))


def test_bare_resume_flag_means_last():
    from meddet.cli.train import normalize_resume_argv

    assert normalize_resume_argv(["pretrain-teacher", "--resume"])[-1] == "last"
    assert normalize_resume_argv(["pretrain-teacher", "--resume", "--out", "R"])[2] == "last"
    assert normalize_resume_argv(["pretrain-teacher", "--resume", "R"]) == [
        "pretrain-teacher", "--resume", "R"]


def test_nmode_flag_places_the_block_and_is_checked(tiny_dataset, tmp_path, capsys):
    from meddet.engine.checkpoint import build_model_from_checkpoint
    from meddet.models.nmode import NmODE2

    # gfl_mbv2 has no nmODE² by default; --nmode head adds one per head branch, also with
    # several models at once (each keeps the flag)
    assert main(["pretrain-teacher", "--model", "gfl_mbv2,gfl_shufflenetv2", "--nmode", "head",
                 "--data", str(tiny_dataset), "--img-size", "64", "--batch-size", "2",
                 "--max-iters", "1", "--out", str(tmp_path / "h")]) == 0
    for name in ("gfl_mbv2", "gfl_shufflenetv2"):
        run = tmp_path / "h" / name
        assert "nmode: head" in (run / "config.yaml").read_text()
        model = build_model_from_checkpoint(load_checkpoint(run / "last.pt"))[0]
        assert sum(isinstance(m, NmODE2) for m in model.modules()) == 2
    # and --nmode none removes the zoo default's (meddet has it in the head)
    assert main(["pretrain-teacher", "--model", "meddet", "--nmode", "none", "--data",
                 str(tiny_dataset), "--img-size", "64", "--batch-size", "2", "--max-iters", "1",
                 "--out", str(tmp_path / "n")]) == 0
    model = build_model_from_checkpoint(load_checkpoint(tmp_path / "n" / "last.pt"))[0]
    assert not any(isinstance(m, NmODE2) for m in model.modules())
    capsys.readouterr()
    assert train(tiny_dataset, tmp_path / "x", "--nmode", "tail") == 2
    assert "nmode" in one_error_line(capsys)
    assert main(["pretrain-teacher", "--resume", str(tmp_path / "n"), "--nmode", "head"]) == 2
    assert "drop --nmode" in one_error_line(capsys)
