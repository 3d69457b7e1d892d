"""`meddet export` and the numpy runtime in `meddet.deploy`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddet import deploy
from meddet.cli import main
from meddet.errors import MedDetError

CLASS_NAMES = ["protrusion", "non-protrusion"]
IMG_SIZE = 64


def small_model(**overrides) -> torch.nn.Module:
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector("meddet", num_classes=2, **overrides)
    with torch.no_grad():
        # Spread the class logits so that the post-process has real work to do (a fresh
        # model scores every location at the 0.01 prior, below the 0.05 threshold).
        torch.nn.init.normal_(model.head.gfl_cls.weight, std=0.05)
        model.head.gfl_cls.bias.fill_(-1.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from meddet.engine.checkpoint import make_meta, save_checkpoint

    meta = make_meta(model_name="meddet", num_classes=2, class_names=CLASS_NAMES,
                     img_size=IMG_SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": small_model().state_dict(), "meta": meta})
    return path


# --------------------------------------------------------------------------- numpy runtime
def test_nms_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 5]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # IoU(0, 1) = 90 / 110 = 0.82 > 0.6 → 1 suppressed; IoU(3, 0) = 0.5 → both kept.
    assert deploy.nms(boxes, scores, 0.6).tolist() == [3, 0, 2]
    labels = np.array([0, 1, 0, 0])
    assert deploy.batched_nms(boxes, scores, labels, 0.6).tolist() == [3, 0, 1, 2]
    assert deploy.batched_nms(boxes[:0], scores[:0], labels[:0], 0.6).tolist() == []


@pytest.mark.parametrize("min_box_size", [0.0, 6.0])
def test_numpy_postprocess_matches_torch(min_box_size):
    model = small_model(min_box_size=min_box_size)
    torch.manual_seed(1)
    size = 128  # raw outputs only: no forward pass, so a larger input costs nothing
    sizes = [(size // s, size // s) for s in model.strides]
    cls = [torch.randn(2, 2, h, w) * 2 - 2 for h, w in sizes]
    reg = [torch.randn(2, 68, h, w) * 3 for h, w in sizes]
    metas = [{"scale": 0.5, "orig_size": (256, 200)}, {"scale": 2.0, "orig_size": (64, 50)}]
    ref = model.postprocess(cls, reg, (size, size), metas)
    got = deploy.postprocess([c.numpy() for c in cls], [r.numpy() for r in reg],
                             strides=model.strides, img_shape=(size, size),
                             min_box_size=min_box_size, center_offset=model.center_offset,
                             anchor_scale=model.anchor_scale, metas=metas)
    for r, g in zip(ref, got):
        size = np.minimum(g["boxes"][:, 2] - g["boxes"][:, 0], g["boxes"][:, 3] - g["boxes"][:, 1])
        assert (size > min_box_size).all()
        assert len(g["boxes"]) == len(r["boxes"]) > 0
        np.testing.assert_array_equal(g["labels"], r["labels"].numpy())
        np.testing.assert_allclose(g["scores"], r["scores"].numpy(), atol=1e-6)
        np.testing.assert_allclose(g["boxes"], r["boxes"].numpy(), atol=1e-3)


def test_numpy_preprocess_matches_training_preprocess():
    from meddet.data import preprocess

    rng = np.random.default_rng(0)
    for shape in [(64, 64), (300, 200), (97, 513), (128, 128)]:
        arr = (rng.random(shape) * 4000).astype(np.float32)
        ref, ref_scale = preprocess(arr, IMG_SIZE)
        got, scale = deploy.preprocess(arr, IMG_SIZE)
        assert scale == ref_scale and got.shape == (3, IMG_SIZE, IMG_SIZE)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- export
def test_export_onnx_cli_passes_its_check_and_runs_without_torch_postprocess(
        tmp_path, checkpoint, capsys):
    out = tmp_path / "model.onnx"
    rc = main(["export", str(checkpoint), "--format", "onnx", "--dynamic-batch",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "export check passed" in text and "max |export - torch|" in text
    import onnx

    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 17
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["meddet"])
    assert meta["class_names"] == CLASS_NAMES and meta["img_size"] == IMG_SIZE
    assert meta["outputs"]["cls"] == [f"cls_p{i}" for i in range(3, 8)]

    # The deployment path (numpy pre-process, onnxruntime, numpy post-process) gives the
    # detections of the PyTorch predictor on an image of another size.
    from meddet.export import synthetic_image
    from meddet.inference import Predictor

    image = synthetic_image(200, seed=3)[:, :150]
    det = deploy.OnnxDetector(out, score_thr=0.3).predict(image)
    ref = Predictor(small_model(), CLASS_NAMES, img_size=IMG_SIZE,
                    score_thr=0.3).predict_arrays([image])[0]
    assert len(det["boxes"]) == len(ref["boxes"]) > 0
    np.testing.assert_array_equal(det["labels"], ref["labels"])
    np.testing.assert_allclose(det["scores"], ref["scores"], atol=1e-4)
    np.testing.assert_allclose(det["boxes"], ref["boxes"], atol=0.05)
    assert det["class_names"][0] in CLASS_NAMES

    # The runtime needs neither torch nor the rest of meddet's stack.
    code = ("import sys, numpy as np; from meddet.deploy import OnnxDetector; "
            f"OnnxDetector({str(out)!r}).predict(np.random.rand(90, 70)); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr

    # The post-process settings travel with the model and can be overridden.
    assert meta["postprocess"] == {"score_thr": 0.05, "nms_pre": 1000, "nms_iou": 0.6,
                                   "max_per_img": 100, "min_box_size": 0.0}
    assert deploy.OnnxDetector(out, min_box_size=2.0).meta["postprocess"]["min_box_size"] == 2.0

    # Dynamic batch: two images in one run.
    sess = deploy.OnnxDetector(out)
    batch = np.stack([deploy.preprocess(image, IMG_SIZE)[0]] * 2)
    cls, reg = sess.raw(batch)
    assert cls[0].shape == (2, 2, 8, 8) and reg[-1].shape == (2, 68, 1, 1)


def test_export_torchscript_api(tmp_path):
    from meddet.export import export_model

    report = export_model(small_model(), CLASS_NAMES, fmt="torchscript", img_size=64,
                          out=tmp_path / "m.torchscript.pt")
    assert report.ok and report.raw_max_abs_diff <= 1e-4
    assert [d.score_thr for d in report.detections] == [0.05, 0.0]
    assert all(d.torch_count == d.export_count == d.matched for d in report.detections)
    assert report.detections[1].torch_count > 0


def test_export_rejects_bad_options(tmp_path, checkpoint, capsys):
    from meddet.export import export_model

    assert main(["export", str(checkpoint), "--format", "tflite"]) == 2
    assert main(["export", str(checkpoint), "--format", "onnx", "--img-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    adaptive = small_model(nmode_kwargs={"method": "dopri5"})
    with pytest.raises(MedDetError, match="no fixed-step form"):
        export_model(adaptive, CLASS_NAMES, fmt="onnx", img_size=64, out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(MedDetError, match="unknown nmODE export form"):
        export_model(small_model(), CLASS_NAMES, fmt="onnx", img_size=64,
                     out=tmp_path / "y.onnx", ode="adaptive")
    assert not (tmp_path / "y.onnx").exists()


def test_table_and_unrolled_ode_graphs_both_pass_the_check(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from meddet.export import export_model

    model = small_model()
    counts = {}
    for ode in ("table", "unrolled"):
        report = export_model(model, CLASS_NAMES, fmt="onnx", img_size=64,
                              out=tmp_path / f"{ode}.onnx", ode=ode)
        assert report.raw_max_abs_diff <= 1e-4  # the self-check against the exact solver
        ops = [n.op_type for n in onnx.load(str(tmp_path / f"{ode}.onnx")).graph.node]
        counts[ode] = (len(ops), ops.count("Gather"), ops.count("Sin") + ops.count("Cos"))
    # Two head blocks: the table form gathers (value and slope) and has no trigonometry; the
    # unrolled form evaluates sin/cos at every stage of every step.
    assert counts["table"][1] >= 4 and counts["table"][2] == 0
    assert counts["unrolled"][2] > 0
    assert counts["unrolled"][0] - counts["table"][0] > 200
    # The module is left as it was: exact fused solver, no export switches.
    assert model.head.cls_nmode.solver == "fused"
    assert not model.head.cls_nmode.graph_table and not model.head.cls_nmode.unrolled


def test_eval_of_onnx_fp32_equals_the_checkpoint_and_int8_is_written(
        tmp_path, checkpoint, tiny_dataset, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out), "--int8",
                 "--calib-data", str(tiny_dataset), "--calib-images", "2"]) == 0
    q8 = tmp_path / "model.int8.onnx"
    assert q8.is_file() and "calibrated on 2 train images" in capsys.readouterr().out
    import onnx

    nodes = [n.op_type for n in onnx.load(str(q8)).graph.node]
    assert "QuantizeLinear" in nodes and "DequantizeLinear" in nodes
    assert "meddet" in {p.key for p in onnx.load(str(q8)).metadata_props}

    preds = {}
    for name, model in (("torch", checkpoint), ("fp32", out), ("int8", q8)):
        assert main(["eval", str(model), "--data", str(tiny_dataset), "--split", "test",
                     "--score-thr", "0.3", "--out", str(tmp_path / name),
                     "--json", str(tmp_path / f"{name}.json")]) == 0, capsys.readouterr().err
        preds[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    # fp32 ONNX = the checkpoint: same detections (boxes to 0.05 px, scores to 1e-4)
    assert len(preds["fp32"]) == len(preds["torch"]) > 0
    for a, b in zip(preds["fp32"], preds["torch"]):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) < 1e-4
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
    metrics = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in preds}
    assert metrics["fp32"]["mAP50"] == metrics["torch"]["mAP50"]
    assert "mAP50" in metrics["int8"] and len(preds["int8"]) > 0


def test_int8_and_onnx_eval_bad_input_is_one_line_exit_2(tmp_path, checkpoint, tiny_dataset,
                                                          capsys):
    def one_line(args, needle):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err

    one_line(["export", str(checkpoint), "--format", "onnx", "--int8", "--out",
              str(tmp_path / "a.onnx")], "--calib-data")
    one_line(["export", str(checkpoint), "--format", "torchscript", "--int8"], "--format onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    one_line(["eval", str(bogus), "--data", str(tiny_dataset), "--split", "test"],
             "bogus.onnx")
    one_line(["eval", str(tmp_path / "missing.onnx"), "--data", str(tiny_dataset)],
             "does not exist")
