"""`evaluate_checkpoint` / `evaluate_predictions`: the metrics equal pycocotools run directly on
the detections they write, the CLI prints exactly what the library returns, and the artefacts
listed are the ones on disk."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import meddet.engine.evaluate as ev
from meddet.cli import main
from meddet.engine import (
    EvalResult,
    evaluate_checkpoint,
    evaluate_predictions,
)
from meddet.errors import MedDetError

CLASSES = ["protrusion", "non-protrusion"]


class Oracle(torch.nn.Module):
    """Ground truth read from the targets, jittered, partly mislabelled, plus false positives:
    detections good enough that every metric lies strictly between 0 and 1."""

    def forward(self, images, targets):
        out = []
        for img, t in zip(images, targets):
            rng = np.random.default_rng(int(t["image_id"]))
            boxes = (t["boxes"] / t["scale"]).numpy().astype(np.float64)
            boxes = boxes + rng.normal(0, 2.0, boxes.shape)
            boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                                    np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
            labels = t["labels"].numpy().copy()
            labels[rng.random(len(labels)) < 0.3] ^= 1
            junk = np.array([[5.0, 5.0, 25.0, 25.0], [60.0, 10.0, 90.0, 30.0]])
            boxes = np.concatenate([boxes, junk])
            labels = np.concatenate([labels, [0, 1]])
            # Scores follow the image content, so noisy images rank their boxes differently.
            scores = np.clip(rng.uniform(0.3, 0.9, len(boxes)) * (0.5 + float(img.mean())), 0, 1)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.long)})
        return out


@pytest.fixture
def oracle(monkeypatch):
    meta = {"img_size": 64, "class_names": CLASSES, "model_name": "oracle"}
    monkeypatch.setattr(ev, "load_eval_model", lambda path, device, score_thr: (Oracle(), meta))


@pytest.fixture
def random_ckpt(random_mbv2_ckpt):
    return random_mbv2_ckpt


def cocoeval_of_file(ann_file, det_file, cat_ids=None) -> COCOeval:
    """pycocotools alone, on the files on disk (no meddet code involved)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        E = COCOeval(gt, gt.loadRes(str(det_file)), "bbox")
        if cat_ids is not None:
            E.params.catIds = cat_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def test_metrics_equal_pycocotools_on_the_written_detections(oracle, tiny_dataset, tmp_path):
    out = tmp_path / "ev"
    res = evaluate_checkpoint("oracle.pt", data=tiny_dataset, split="test", score_thr=0.0,
                              out_dir=out)
    ann = tiny_dataset / "annotations" / "test.json"
    E = cocoeval_of_file(ann, out / "predictions.json")
    m = res.metrics
    assert (m["mAP"], m["mAP50"], m["mAP75"], m["AR100"]) == (
        E.stats[0], E.stats[1], E.stats[2], E.stats[8])
    assert 0 < m["mAP"] < m["mAP50"] < 1 and 0 < m["recall"] < 1
    # The paper's recall: matched ground truth at IoU 0.5 (top 100) over all ground truth.
    gt = json.loads(ann.read_text())["annotations"]
    matched = sum(int((e["gtMatches"][0] > 0).sum()) for e in E.evalImgs
                  if e is not None and list(e["aRng"]) == [0, 1e10])
    assert m["recall"] == matched / len(gt)
    for name, cat in zip(CLASSES, (1, 2)):
        Ec = cocoeval_of_file(ann, out / "predictions.json", [cat])
        pc = res.per_class[name]
        assert (pc["mAP"], pc["mAP50"], pc["AR100"]) == (Ec.stats[0], Ec.stats[1], Ec.stats[8])
        assert pc["num_gt"] == sum(a["category_id"] == cat for a in gt)
    # metrics.json is to_dict(), and the files listed are exactly those written.
    assert json.loads((out / "metrics.json").read_text()) == res.to_dict()
    assert res.to_dict()["checkpoint"] == "oracle.pt" and res.to_dict()["split"] == "test"
    assert list(res.files) == ["metrics.json", "predictions.json", "pr_curve.png",
                               "confusion_matrix.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(res.files)


def test_saved_predictions_re_evaluate_to_the_same_numbers(oracle, tiny_dataset, tmp_path):
    res = evaluate_checkpoint("oracle.pt", data=tiny_dataset, score_thr=0.0,
                              out_dir=tmp_path / "a")
    again = evaluate_predictions(tmp_path / "a" / "predictions.json", data=tiny_dataset,
                                 out_dir=tmp_path / "b")
    assert again.metrics == res.metrics
    assert again.to_dict()["predictions"] == str(tmp_path / "a" / "predictions.json")
    assert again.checkpoint is None and "predictions.json" not in again.files
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(again.files)


def test_noise_sweep_rows_are_the_noisy_evaluations(oracle, tiny_dataset, tmp_path):
    out = tmp_path / "sweep"
    res = evaluate_checkpoint("oracle.pt", data=tiny_dataset, noise_sweep="rician:20,2.5",
                              score_thr=0.0, out_dir=out)
    assert [r["noise"] for r in res.noise_sweep] == ["clean", "rician:20", "rician:2.5"]
    assert [r["level"] for r in res.noise_sweep] == [None, 20.0, 2.5]
    assert res.noise_sweep[0] == {"noise": "clean", "level": None,
                                  **{k: res.metrics[k] for k in ("mAP", "mAP50", "recall")}}
    for row in res.noise_sweep[1:]:
        noisy = evaluate_checkpoint("oracle.pt", data=tiny_dataset, noise=row["noise"],
                                    score_thr=0.0)
        assert noisy.noise == row["noise"] and noisy.to_dict()["noise"] == row["noise"]
        assert {k: noisy.metrics[k] for k in ("mAP", "mAP50", "recall")} == \
            {k: row[k] for k in ("mAP", "mAP50", "recall")}
    with open(out / "noise_sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["noise"], r["level"]) for r in rows] == [("clean", ""), ("rician:20", "20.0"),
                                                       ("rician:2.5", "2.5")]
    assert [float(r["mAP50"]) for r in rows] == [r["mAP50"] for r in res.noise_sweep]
    assert list(res.files)[-2:] == ["noise_sweep.csv", "noise_sweep.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(res.files)


def test_cli_prints_what_the_library_returns(random_ckpt, tiny_dataset, tmp_path, capsys):
    lib = evaluate_checkpoint(random_ckpt, data=tiny_dataset, split="test", score_thr=0.0,
                              noise_sweep="rician:5")
    assert main(["eval", str(random_ckpt), "--data", str(tiny_dataset), "--split", "test",
                 "--score-thr", "0", "--noise-sweep", "rician:5", "--out", str(tmp_path / "cli"),
                 "--json", "-"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli == json.loads(json.dumps(lib.to_dict()))
    assert json.loads((tmp_path / "cli" / "predictions.json").read_text()) == lib.detections


def test_bad_arguments_are_user_errors(random_ckpt, tiny_dataset, tmp_path):
    with pytest.raises(MedDetError, match="cannot be combined"):
        evaluate_checkpoint(random_ckpt, data=tiny_dataset, noise="rician:5",
                            noise_sweep="rician:5")
    for spec in ("rician", "rician:a,b", ":5"):
        with pytest.raises(MedDetError, match="--noise-sweep"):
            evaluate_checkpoint(random_ckpt, data=tiny_dataset, noise_sweep=spec)
    with pytest.raises(MedDetError, match="does not exist"):
        evaluate_checkpoint(tmp_path / "none.onnx", data=tiny_dataset)
    with pytest.raises(MedDetError, match="no 'nope' split"):
        evaluate_predictions(tmp_path / "p.json", data=tiny_dataset, split="nope")
    assert not list(tmp_path.iterdir())  # nothing written on failure


def test_to_dict_key_order_is_the_cli_json():
    metrics = {"mAP": 0.1, "mAP50": 0.2, "mAP75": 0.0, "AR100": 0.3, "recall": 0.4,
               "per_class": {}, "num_images": 2}
    r = EvalResult(metrics=metrics, detections=[], split="test", checkpoint="m.pt",
                   noise="rician:5")
    assert list(r.to_dict()) == [*metrics, "checkpoint", "split", "noise"]
    r = EvalResult(metrics=metrics, detections=[], split="val", predictions="p.json")
    assert list(r.to_dict()) == [*metrics, "checkpoint", "split", "predictions"]
    assert r.to_dict()["checkpoint"] is None
