"""Defaults that fit the machine, TensorBoard events, the Python API,
and bad inputs that get one line, exit code 2 and no new folder.

Every test runs in its own working directory, so ``runs/`` appearing there is debris.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from meddet.cli import main

TINY = ["--img-size", "64", "--batch-size", "2", "--max-iters", "1", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def fails(argv: list, needle: str, capsys) -> str:
    """Exit 2, one clean line holding ``needle``, nothing written under ./runs."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert err.startswith("Error:") and len(err.splitlines()) == 1, err
    assert needle in err, err
    assert not Path("runs").exists(), sorted(map(str, Path("runs").rglob("*")))
    return err


# --------------------------------------------------------------------------- defaults
def test_without_config_training_uses_the_device_recipe_and_says_so(tiny_dataset, capsys,
                                                                    monkeypatch):
    """One run, read three ways: the chosen config, the initial weights line, and the
    TensorBoard events written by default when the package is installed."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MEDDET_TENSORBOARD", "1")  # as outside the tests: on when installed
    assert main(["pretrain-teacher", "--model", "gfl_mbv2", "--data", str(tiny_dataset),
                 "--img-size", "64", "--batch-size", "2", "--max-iters", "2", "--epochs", "1",
                 "--pretrained", "none"]) == 0
    out = capsys.readouterr().out
    assert "config: cpu-crop (the default on cpu" in out
    assert "initial weights of gfl_mbv2: mobilenet_v2: random initialisation" in out
    run = Path("runs/pretrain-teacher/gfl_mbv2")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # cpu-crop's recipe, and `--device auto` recorded as the device it resolved to.
    assert cfg["train"]["optimizer"] == "adamw" and cfg["data"]["augmentation"]["crop"] == 128
    assert cfg["train"]["device"] == "cpu" and cfg["model"]["pretrained"] == "none"

    (events,) = list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    acc.Reload()
    assert {"train/loss", "train/loss_qfl", "train/lr", "epoch/loss", "val/mAP50",
            "val/recall"} <= set(acc.Tags()["scalars"])
    # The last iteration is always written; the lr is the one results.csv records.
    (loss,) = [e for e in acc.Scalars("train/loss") if e.step == 2]
    assert np.isfinite(loss.value)
    header, row = (run / "results.csv").read_text().splitlines()
    rec = dict(zip(header.split(","), row.split(",")))
    assert acc.Scalars("val/mAP50")[-1].step == 2
    assert acc.Scalars("train/lr")[-1].value == pytest.approx(float(rec["lr"]), rel=1e-6)
    (img,) = acc.Images("val/predictions")
    assert img.width >= 64 and img.height >= 64

    # A second run of the same model is numbered after a separator, not glued to the "2".
    from meddet.runs import new_run_dir

    assert new_run_dir("pretrain-teacher", name="gfl_mbv2").name == "gfl_mbv2-2"
    assert new_run_dir("eval").name == "exp" and new_run_dir("eval").name == "exp2"


def test_default_config_on_cuda_is_the_demo_gpu_recipe():
    from meddet.api import default_config
    from meddet.demo.plan import PLANS

    name, flags = default_config("cuda:0", {"data": {"workers": None}, "train": {}})
    assert name == "cpu-crop" and flags["data"]["workers"] == PLANS["gpu"].workers
    assert default_config("cuda", {"data": {"workers": 1}})[1]["data"]["workers"] == 1
    assert default_config("cpu", {"data": {"workers": None}}) == (
        "cpu-crop", {"data": {"workers": None}})


def test_auto_device():
    import torch

    from meddet.device import auto_device, resolve_device

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto_device("auto") == auto_device(None) == want and auto_device("cpu") == "cpu"
    assert resolve_device("auto").type == want


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_switches(monkeypatch):
    import meddet.engine.tensorboard as tb

    monkeypatch.setattr(tb, "tensorboard_available", lambda: True)
    monkeypatch.setenv("MEDDET_TENSORBOARD", "1")
    assert isinstance(tb.tensorboard_hook("r"), tb.TensorBoardHook)
    with tb.tensorboard_logging(False):  # --no-tensorboard
        assert tb.tensorboard_hook("r") is None
    monkeypatch.setenv("MEDDET_TENSORBOARD", "0")
    assert tb.tensorboard_hook("r") is None
    with tb.tensorboard_logging(True):  # --tensorboard wins over the environment
        assert tb.tensorboard_hook("r").log_dir == Path("r/tensorboard")
    assert tb.tensorboard_hook("r") is None  # the block ended


def test_tensorboard_without_the_package_is_one_line(tiny_dataset, monkeypatch, capsys):
    import meddet.engine.tensorboard as tb

    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", tiny_dataset, *TINY,
           "--tensorboard"], "pip install tensorboard", capsys)
    fails(["distill", "--data", tiny_dataset, "--method", "none", "--student", "gfl_mbv2",
           *TINY, "--tensorboard"], "pip install tensorboard", capsys)
    monkeypatch.setenv("MEDDET_TENSORBOARD", "1")
    assert tb.tensorboard_hook("r") is None  # the default: on only when installed


# --------------------------------------------------------------------------- bad inputs
def test_bad_training_inputs_get_one_line_and_no_folder(tiny_dataset, tmp_path, capsys):
    data = str(tiny_dataset)
    err = fails(["pretrain-teacher", "--data", data], "pass --model NAME", capsys)
    assert "gfl_r50" in err and "meddet_lite" in err  # the zoo is listed, not a Python name
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", "yolo/data.yaml"],
          "meddet data import yolo OUT", capsys)
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", data, "--pretrained", "imgnet"],
          "--pretrained 'imgnet': use auto, imagenet, none", capsys)
    fails(["distill", "--data", data, "--teachers", "nope.pt", "--student", "gfl_mbv2", *TINY],
          "nope.pt", capsys)
    # A truncated checkpoint given alone is reported as such, not as a missing config.yaml.
    cut = tmp_path / "elsewhere" / "last.pt"
    cut.parent.mkdir()
    cut.write_bytes(b"PK\x03\x04 truncated")
    err = fails(["pretrain-teacher", "--resume", cut], str(cut), capsys)
    assert "config.yaml" not in err


def test_data_commands_take_out_and_name_a_missing_source(capsys):
    assert main(["data", "synth", "--out", "d", "--num-train", "1", "--num-val", "1",
                 "--num-test", "1", "--size", "128"]) == 0
    assert Path("d/annotations/train.json").is_file()
    fails(["data", "synth", "a", "--out", "b"], "given twice", capsys)
    fails(["data", "synth"], "pass the output folder", capsys)
    fails(["data", "import", "nowhere", "--out", "o"], "source nowhere does not exist", capsys)
    assert not Path("o").exists() and not Path("a").exists()


def test_check_real_and_predict_leave_nothing_after_an_error(tiny_teachers, capsys, tmp_path):
    ckpt = str(tiny_teachers[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    err = fails(["check-real", ckpt, "--volumes", empty], "spinalcordtoolbox", capsys)
    assert "--volumes DIR" in err
    fails(["predict", ckpt, empty], "no image, DICOM or NIfTI file", capsys)
    (empty / "notes.txt").write_text("not an image")
    fails(["predict", ckpt, empty], "unsupported file type (.txt)", capsys)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    fails(["predict", ckpt, bad, "--out", "runs/mine/p"], "no image could be read", capsys)


def test_check_real_with_a_bad_checkpoint_leaves_no_run(tmp_path, capsys):
    from meddet.engine.realcheck import default_volumes_dir

    volumes = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-mri"
    if not (volumes / "sct_t2_cervical.nii.gz").is_file():
        volumes = default_volumes_dir()
    if not (volumes / "sct_t2_cervical.nii.gz").is_file():
        pytest.skip("the real MRI volumes are not here")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    fails(["check-real", bad, "--volumes", volumes], "bad.pt", capsys)


# --------------------------------------------------------------------------- API
def test_detector_predictions_draw_and_save(tiny_teachers, tmp_path):
    from PIL import Image

    import meddet

    det = meddet.Detector(tiny_teachers[0], score_thr=0.0, device="cpu")
    image = np.random.default_rng(0).random((96, 80)).astype(np.float32)
    (p,) = det(image)
    assert p.boxes.shape == (len(p), 4) and len(p) > 0
    assert p.boxes[:, [0, 2]].max() <= 80 and p.boxes[:, [1, 3]].max() <= 96
    assert list(p.scores) == sorted(p.scores, reverse=True)
    assert p.to_dicts()[0]["class"] in det.class_names
    saved = Image.open(p.save(tmp_path / "p.png"))
    assert saved.size == p.draw().size and saved.size[0] >= 80
    png = tmp_path / "img.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(png)
    (q,) = meddet.predict(tiny_teachers[0], [png], score_thr=0.0, device="cpu")
    assert q.source.endswith("img.png") and len(q) > 0


def test_predict_runs_an_onnx_export(tiny_teachers, tmp_path):
    pytest.importorskip("onnxruntime")
    from meddet.api import load_predictor
    from meddet.engine.checkpoint import build_model_from_checkpoint
    from meddet.export import export_model

    model, meta = build_model_from_checkpoint(tiny_teachers[0], "cpu")
    export_model(model, meta["class_names"], fmt="onnx", img_size=64, out=tmp_path / "m.onnx",
                 check=False)
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    onnx = load_predictor(tmp_path / "m.onnx", score_thr=0.0).predict_arrays([image])[0]
    torch_ = load_predictor(tiny_teachers[0], img_size=64, score_thr=0.0,
                            device="cpu").predict_arrays([image])[0]
    k = min(len(onnx["scores"]), len(torch_["scores"]), 5)
    assert k > 0
    np.testing.assert_allclose(onnx["scores"][:k], torch_["scores"][:k], atol=1e-4)
    np.testing.assert_allclose(onnx["boxes"][:k], torch_["boxes"][:k], atol=1e-2)
    with pytest.raises(Exception, match="exported at 64 px"):
        load_predictor(tmp_path / "m.onnx", img_size=96)


def test_unavailable_imagenet_weights_stop_before_any_folder(tiny_dataset, monkeypatch, capsys):
    import meddet.models.pretrained as pre

    monkeypatch.setattr(pre, "_fetch_imagenet", lambda backbone: (None, "no network here"))
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", tiny_dataset, *TINY,
           "--pretrained", "imagenet"], "no ImageNet weights", capsys)
    fails(["distill", "--data", tiny_dataset, "--method", "none", "--student", "gfl_mbv2",
           *TINY, "--pretrained", "imagenet"], "no network here", capsys)
    fails(["demo", "--quick", "--pretrained", "imagenet"], "no network here", capsys)
