"""COCO metrics equal pycocotools' to the last digit; recall, confusion matrix, validation."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from meddet.engine.evaluator import (
    confusion_matrix,
    detections_to_coco,
    evaluate_coco,
    pr_curves,
    run_cocoeval,
    validate_results,
)
from meddet.errors import MedDetError

NAMES = ["protrusion", "non-protrusion"]
CATS = [1, 2]


def make_gt(num_images: int = 12, seed: int = 0) -> COCO:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 256, "height": 256})
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(8, 50, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                         "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": NAMES[0]}, {"id": 2, "name": NAMES[1]}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def make_dets(coco: COCO, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    dets = []
    for ann in coco.dataset["annotations"]:
        if rng.random() < 0.2:  # missed
            continue
        x, y, w, h = ann["bbox"]
        j = rng.normal(0, 0.1, 4) * [w, h, w, h]
        cat = ann["category_id"] if rng.random() < 0.85 else 3 - ann["category_id"]
        dets.append({"image_id": ann["image_id"], "category_id": cat,
                     "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                     "score": float(rng.uniform(0.3, 1.0))})
    for img in coco.dataset["images"]:  # false positives
        for _ in range(rng.integers(0, 4)):
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": [*map(float, rng.uniform(0, 200, 2)), 20.0, 20.0],
                         "score": float(rng.uniform(0.05, 0.6))})
    return dets


def direct(coco: COCO, dets: list[dict], cat_ids=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
        if cat_ids is not None:
            E.params.catIds = cat_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def test_metrics_equal_pycocotools_exactly():
    coco = make_gt()
    dets = make_dets(coco)
    m = evaluate_coco(coco, dets, NAMES, CATS)
    E = direct(coco, dets)
    assert (m["mAP"], m["mAP50"], m["mAP75"], m["AR100"]) == (
        E.stats[0], E.stats[1], E.stats[2], E.stats[8])
    assert 0 < m["mAP"] < m["mAP50"] <= 1
    for name, cat in zip(NAMES, CATS):
        Ec = direct(coco, dets, [cat])
        pc = m["per_class"][name]
        assert (pc["mAP"], pc["mAP50"], pc["mAP75"], pc["AR100"]) == (
            Ec.stats[0], Ec.stats[1], Ec.stats[2], Ec.stats[8])
        # The paper's recall per class is COCOeval's recall at IoU 0.5, area all, 100 dets.
        assert pc["recall"] == float(E.eval["recall"][0, CATS.index(cat), 0, -1])
        assert pc["num_gt"] == len(coco.getAnnIds(catIds=[cat]))
    total = sum(m["per_class"][n]["num_gt"] for n in NAMES)
    matched = sum(m["per_class"][n]["recall"] * m["per_class"][n]["num_gt"] for n in NAMES)
    assert m["recall"] == pytest.approx(matched / total)
    assert m["num_images"] == 12
    assert dets == make_dets(coco)  # inputs are not mutated (loadRes adds fields)



def test_class_agnostic_metrics_equal_pycocotools_without_categories():
    coco = make_gt()
    dets = make_dets(coco)
    m = evaluate_coco(coco, dets, NAMES, CATS)
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iouType="bbox")
        E.params.useCats = 0
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert (m["class_agnostic"]["mAP"], m["class_agnostic"]["mAP50"]) == (E.stats[0], E.stats[1])


def test_exact_boxes_with_every_class_wrong_are_found_but_score_zero():
    coco = make_gt(num_images=3, seed=5)
    other = {CATS[0]: CATS[1], CATS[1]: CATS[0]}
    dets = [{"image_id": g["image_id"], "category_id": other[g["category_id"]],
             "bbox": list(g["bbox"]), "score": 0.9} for g in coco.dataset["annotations"]]
    m = evaluate_coco(coco, dets, NAMES, CATS)
    assert m["mAP50"] == 0 and m["recall"] == 0
    assert m["class_agnostic"]["mAP50"] == pytest.approx(1.0)
    assert m["class_agnostic"]["recall"] == 1.0

def test_recall_counts_top_100_at_iou_50():
    coco = make_gt(num_images=1, seed=3)
    gts = coco.dataset["annotations"]
    # Exact hits for every box but one, 150 low-scoring junk boxes that must not count.
    dets = [{"image_id": 1, "category_id": g["category_id"], "bbox": list(g["bbox"]),
             "score": 0.9} for g in gts[1:]]
    dets += [{"image_id": 1, "category_id": gts[0]["category_id"], "bbox": [0.0, 0.0, 1.0, 1.0],
              "score": 0.01} for _ in range(150)]
    m = evaluate_coco(coco, dets, NAMES, CATS)
    assert m["recall"] == (len(gts) - 1) / len(gts)


def test_empty_results_give_zeros_not_a_crash():
    coco = make_gt()
    m = evaluate_coco(coco, [], NAMES, CATS)
    assert m["mAP"] == 0 and m["mAP50"] == 0 and m["recall"] == 0
    assert all(v["mAP50"] == 0 for v in m["per_class"].values())


def test_validate_results_rejects_unknown_ids():
    coco = make_gt()
    good = make_dets(coco)
    assert validate_results(good, coco) is good
    with pytest.raises(MedDetError, match="image ids not in this split.*first: 999"):
        validate_results(good + [{**good[0], "image_id": 999}], coco)
    with pytest.raises(MedDetError, match=r"unknown category ids.*first: 7.*\[1, 2\]"):
        validate_results(good + [{**good[0], "category_id": 7}], coco)
    with pytest.raises(MedDetError, match="no 'score'"):
        validate_results([{k: v for k, v in good[0].items() if k != "score"}], coco)
    with pytest.raises(MedDetError, match="JSON list"):
        validate_results({"annotations": []}, coco)


def test_confusion_matrix_counts():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "p"}, {"id": 2, "name": "n"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10], "area": 100, "iscrowd": 0},
        ]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},    # TP p
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},  # n seen as p
        {"image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 10], "score": 0.7},  # background
        {"image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10], "score": 0.01},  # below thr
    ]
    cm = confusion_matrix(coco, dets, [1, 2], score_thr=0.05)
    assert cm.tolist() == [[1, 0, 0],
                           [1, 0, 1],
                           [0, 1, 0]]


def test_detections_to_coco_and_pr_curves():
    out = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.91234567]),
            "labels": torch.tensor([1])}]
    res = detections_to_coco(out, [5], CATS)
    assert res == [{"image_id": 5, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0],
                    "score": 0.91235}]
    coco = make_gt()
    E = run_cocoeval(coco, make_dets(coco))
    curves = pr_curves(E, NAMES, CATS)
    rec, prec = curves["protrusion"]
    assert rec.shape == prec.shape == (101,)
    assert np.nanmax(prec) <= 1


def test_metric_tables_name_recall_precisely_and_show_ar100_beside_it():
    from meddet.cli.evaluate import metrics_table, sweep_table

    per = {"mAP": 0.1, "mAP50": 0.2, "mAP75": 0.05, "AR100": 0.3, "recall": 0.4, "num_gt": 5}
    metrics = {**{k: v for k, v in per.items() if k != "num_gt"}, "per_class": {"a": per}}
    table = metrics_table(metrics, "t")
    headers = [c.header for c in table.columns]
    assert headers == ["class", "mAP", "mAP50", "mAP75", "AR100", "recall@.5", "GT boxes"]
    assert "IoU 0.5" in table.caption and "0.5:0.95" in table.caption
    cells = [list(c.cells) for c in table.columns]
    assert cells[4][0].startswith("0.3")  # AR100
    assert cells[5][0].startswith("0.4")  # the recall@.5 column holds the recall key
    sweep = sweep_table([{"noise": "clean", "mAP": 0.1, "mAP50": 0.2, "recall": 0.4}], "rician")
    assert [c.header for c in sweep.columns] == ["noise", "mAP", "mAP50", "recall@.5"]
