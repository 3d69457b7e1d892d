"""The real-disc check: its metrics, the hand-labelled fixture, and `meddet check-real`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddet.cli import main
from meddet.engine.realcheck import (
    best_matches,
    box_size_ratios,
    class_agnostic_ap50,
    edge_offsets,
    evaluate_real_discs,
    load_real_disc_labels,
    read_labelled_slices,
    recall_at_k,
    score_volume,
)
from meddet.errors import MedDetError
from meddet.inference.predictor import Predictor

# Real data beside the repository (``../shared/data``); MEDDET_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("MEDDET_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL_MRI = SHARED / "real-mri"
needs_volumes = pytest.mark.skipif(not REAL_MRI.is_dir(),
                                   reason=f"real MRI volumes not found at {REAL_MRI}")


def det(boxes, scores, labels=None) -> dict[str, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"boxes": boxes, "scores": np.asarray(scores, np.float32), "labels": labels}


# --------------------------------------------------------------------------- recall
def test_recall_counts_only_the_top_k_detections():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([[0, 0, 8, 8]], float)]
    # Image 1: the box on the second disc is the third best; image 2: its disc is found first.
    dets = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7]),
            det([[0, 0, 8, 8]], [0.1])]
    assert recall_at_k(gt, dets, k=2) == (2, 3)
    assert recall_at_k(gt, dets, k=3) == (3, 3)
    assert recall_at_k(gt, dets, k=1) == (2, 3)
    # The order given does not matter, only the scores.
    shuffled = [det([[20, 20, 30, 30], [0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.9, 0.8]),
                dets[1]]
    assert recall_at_k(gt, shuffled, k=2) == (2, 3)


def test_recall_iou_threshold_is_inclusive():
    gt = [np.array([[0, 0, 10, 10]], float)]
    assert recall_at_k(gt, [det([[0, 0, 10, 5]], [0.5])]) == (1, 1)  # IoU exactly 0.5
    assert recall_at_k(gt, [det([[0, 0, 10, 4.9]], [0.5])]) == (0, 1)  # IoU 0.49


def test_recall_is_class_agnostic_and_not_one_to_one():
    gt = [np.array([[0, 0, 10, 10], [0, 0, 10, 9]], float)]
    # One detection of class 1 finds both discs (IoU 1.0 and 0.9).
    assert recall_at_k(gt, [det([[0, 0, 10, 10]], [0.3], labels=[1])]) == (2, 2)
    assert recall_at_k([np.zeros((0, 4))], [det([[0, 0, 1, 1]], [0.9])]) == (0, 0)
    assert recall_at_k(gt, [det(np.zeros((0, 4)), [])]) == (0, 2)
    with pytest.raises(MedDetError):
        recall_at_k(gt, [det([[0, 0, 10, 10]], [0.3])], k=0)


# --------------------------------------------------------------------------- AP50
def test_ap50_hand_computed():
    gt = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)]
    # By score: a hit, a miss, a hit -> precision 1 up to recall 0.5, then 2/3 up to recall 1.
    # COCO interpolates at 101 recall points: 51 of them (0.00 ... 0.50) at 1, 50 at 2/3.
    dets = [det([[0, 0, 10, 10], [40, 40, 50, 50], [20, 0, 30, 10]], [0.9, 0.8, 0.7],
                labels=[0, 1, 1])]
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert class_agnostic_ap50(gt, dets, [(60, 60)]) == pytest.approx(expected, abs=1e-12)
    assert class_agnostic_ap50(gt, [det(gt[0], [0.5, 0.4])], [(60, 60)]) == pytest.approx(1.0)
    assert class_agnostic_ap50(gt, [det(np.zeros((0, 4)), [])], [(60, 60)]) == 0.0


def test_ap50_equals_pycocotools_class_agnostic_mode():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    gts, dets, shapes = [], [], []
    images, anns, results = [], [], []
    for img_id in range(1, 7):
        xy = rng.uniform(0, 60, size=(4, 2))
        gt = np.concatenate([xy, xy + rng.uniform(6, 15, size=(4, 2))], axis=1)
        # Detections near the discs (some good, some poor) plus random clutter, two classes.
        near = gt + rng.normal(0, 2.5, size=gt.shape)
        cxy = rng.uniform(0, 60, size=(5, 2))
        clutter = np.concatenate([cxy, cxy + rng.uniform(4, 12, size=(5, 2))], axis=1)
        boxes = np.concatenate([near, clutter])
        scores = rng.uniform(0.05, 1.0, size=len(boxes))
        labels = rng.integers(0, 2, size=len(boxes))
        gts.append(gt)
        dets.append(det(boxes, scores, labels))
        shapes.append((80, 80))
        images.append({"id": img_id, "width": 80, "height": 80})
        for k, (x1, y1, x2, y2) in enumerate(gt):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1 + k % 2,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0})
        for (x1, y1, x2, y2), s, lab in zip(dets[-1]["boxes"].astype(float), scores, labels):
            results.append({"image_id": img_id, "category_id": int(lab) + 1, "score": float(s),
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    # The reference: pycocotools itself, with two categories and useCats=0 (its own
    # class-agnostic mode), built independently of meddet.
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        E = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        E.params.useCats = 0
        E.evaluate()
        E.accumulate()
        E.summarize()
    ours = class_agnostic_ap50(gts, dets, shapes)
    assert 0.05 < ours < 0.95  # a case where the interpolation matters
    assert ours == pytest.approx(E.stats[1], abs=1e-9)


# --------------------------------------------------------------------------- per volume
def test_best_match_is_among_the_top_k_and_gives_the_box_ratios():
    gt = np.array([[0, 0, 10, 4], [20, 0, 30, 4]], float)
    # By score: twice as tall on disc 1 (IoU 40/80), half as wide on disc 2 (IoU 20/40), and a
    # perfect box on disc 2 that only counts with k >= 3.
    d = det([[0, 0, 10, 8], [20, 0, 25, 4], [20, 0, 30, 4]], [0.9, 0.8, 0.1])
    iou, boxes = best_matches(gt, d, k=2)
    assert iou.tolist() == [0.5, 0.5]
    assert boxes.tolist() == [[0, 0, 10, 8], [20, 0, 25, 4]]
    iou, boxes = best_matches(gt, d, k=3)
    assert iou.tolist() == [0.5, 1.0] and boxes[1].tolist() == [20, 0, 30, 4]
    iou, boxes = best_matches(gt, det([[50, 50, 60, 60]], [0.9]), k=10)
    assert iou.tolist() == [0.0, 0.0] and np.isnan(boxes).all()  # no overlap: no match


def test_volume_score_hand_computed():
    # Slice 1: three 10x10 discs, each overlapped by one detection, IoU 0.6, 0.4 and 0.2 (by
    # descending score); slice 2: one disc, no detection.
    gts = [np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float),
           np.array([[0, 0, 10, 10]], float)]
    dets = [det([[40, 0, 50, 6], [20, 0, 28, 5], [0, 0, 5, 4]], [0.9, 0.8, 0.7]),
            det(np.zeros((0, 4)), [])]
    v = score_volume("vol.nii.gz", gts, dets, [(20, 60), (20, 60)], k=10)
    assert (v.volume, v.slices, v.discs, v.matched) == ("vol.nii.gz", 2, 4, 3)
    assert v.found == {0.1: 3, 0.3: 2, 0.5: 1}
    assert v.recall(0.3) == 0.5 and v.recall() == 0.25
    # Heights 6/10, 5/10, 4/10 and widths 10/10, 8/10, 5/10 of the three matched discs.
    assert v.height_ratio == pytest.approx(0.5) and v.width_ratio == pytest.approx(0.8)
    # Edges of the three matches (superior, inferior, anterior, posterior; + reaches beyond):
    # (0, -4, 0, 0), (0, -5, 0, -2), (0, -6, 0, -5); medians 0, -5, 0, -2.
    assert v.edge_offsets == {"superior": 0.0, "inferior": -5.0, "anterior": 0.0,
                              "posterior": -2.0}
    # One true positive at IoU 0.5, ranked first, out of 4 discs: precision 1 up to recall
    # 0.25, i.e. 26 of COCO's 101 recall points.
    assert v.ap50 == pytest.approx(26 / 101, abs=1e-12)
    d = v.as_dict()
    assert d["found_at"] == {"0.1": 3, "0.3": 2, "0.5": 1}
    assert d["recall_at"] == {"0.1": 0.75, "0.3": 0.5, "0.5": 0.25}
    assert json.loads(json.dumps(d)) == d
    empty = score_volume("v", [gts[1]], [dets[1]], [(20, 60)])
    assert empty.height_ratio is None and empty.width_ratio is None and empty.matched == 0
    assert empty.edge_offsets is None and empty.as_dict()["median_edge_offsets_px"] is None


def test_edge_offsets_signs_and_unmatched_rows():
    gt = np.array([[10, 20, 30, 24], [0, 0, 5, 5]], float)
    pred = np.array([[8, 19, 33, 26], [np.nan] * 4])
    # The box reaches 1 px above, 2 below, 2 in front of and 3 behind the label; the unmatched
    # row is left out.
    assert edge_offsets(gt, pred).tolist() == [[1.0, 2.0, 2.0, 3.0]]
    inside = edge_offsets(gt[:1], np.array([[12, 21, 29, 23]], float))
    assert inside.tolist() == [[-1.0, -1.0, -2.0, -1.0]]
    # Consistent with the size ratios: the height gained is the sum of the vertical offsets.
    h, _ = box_size_ratios(gt[:1], pred[:1])
    assert h[0] * 4 - 4 == pytest.approx(1.0 + 2.0)


# --------------------------------------------------------------------------- the fixture
def test_fixture_loads_and_boxes_lie_inside_their_slices():
    labels = load_real_disc_labels()
    per_volume: dict[str, list[int]] = {}
    for lab in labels:
        per_volume.setdefault(lab.volume, []).append(len(lab.boxes))
        h, w = lab.shape
        b = lab.boxes
        assert b.shape[1] == 4 and len(b) == len(lab.truncated) > 0
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] - b[:, 0] >= 5).all() and (b[:, 3] - b[:, 1] >= 3).all()
        touches = (b[:, 0] <= 0) | (b[:, 1] <= 0) | (b[:, 2] >= w) | (b[:, 3] >= h)
        assert tuple(touches) == lab.truncated, lab.name
    assert per_volume == {"sct_t2_cervical.nii.gz": [3, 3, 3, 3],
                          "sct_t1w_cervical.nii.gz": [4, 4, 4, 4, 4]}
    assert len({(lab.volume, lab.index) for lab in labels}) == len(labels) == 9


@needs_volumes
def test_fixture_matches_the_shared_volumes():
    labels = load_real_disc_labels()
    for lab in labels:
        digest = hashlib.sha256((REAL_MRI / lab.volume).read_bytes()).hexdigest()
        assert digest == lab.sha256, lab.volume
    arrays = read_labelled_slices(labels, REAL_MRI)
    assert [a.shape for a in arrays] == [lab.shape for lab in labels]


@needs_volumes
def test_t1_boxes_sit_on_bright_discs_between_dark_vertebral_bodies():
    # On this T1 volume the discs are bright bands between dark vertebral bodies, so each box
    # must be much brighter than the bone 3-8 pixels above and below it. A reader that flipped
    # the slice (or labels drawn in another orientation) fails this: flipped, the ratio's median
    # drops below 1.
    labels = load_real_disc_labels()
    arrays = read_labelled_slices(labels, REAL_MRI)
    ratios = []
    for lab, arr in zip(labels, arrays):
        if lab.volume != "sct_t1w_cervical.nii.gz":
            continue
        for x1, y1, x2, y2 in np.rint(lab.boxes).astype(int):
            bone = np.concatenate([arr[max(0, y1 - 8):max(0, y1 - 3), x1:x2].ravel(),
                                   arr[y2 + 3:y2 + 8, x1:x2].ravel()])
            ratios.append(arr[y1:y2, x1:x2].mean() / bone.mean())
    assert len(ratios) == 20 and min(ratios) > 1.5


def test_missing_or_changed_volumes_are_user_errors(tmp_path, capsys):
    with pytest.raises(MedDetError, match=r"not found in .*--volumes"):
        read_labelled_slices(load_real_disc_labels(), tmp_path)
    for name in ("sct_t2_cervical.nii.gz", "sct_t1w_cervical.nii.gz"):
        (tmp_path / name).write_bytes(b"not the labelled volume")
    with pytest.raises(MedDetError, match="not the file the disc labels were drawn on"):
        read_labelled_slices(load_real_disc_labels(), tmp_path)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    assert main(["check-real", str(ckpt), "--volumes", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--volumes" in err


# --------------------------------------------------------------------------- end to end
class _Oracle(Predictor):
    """Returns given boxes per image, in the order the check asks for the slices."""

    def __init__(self, boxes: list[np.ndarray], shapes: list[tuple[int, int]]) -> None:
        self.boxes, self.shapes = boxes, shapes
        self.img_size, self.score_thr = 64, 0.05
        self.resample, self.input_spacing_mm = "fixed", None

    def predict_arrays(self, arrays, spacings=None):
        assert [a.shape for a in arrays] == self.shapes
        assert spacings == [(1.0, 1.0)] * len(arrays)  # the volumes are 1 mm isotropic
        return [det(b, np.linspace(0.9, 0.5, len(b))) for b in self.boxes]


@needs_volumes
def test_a_perfect_and_a_shifted_detector(tmp_path):
    labels = load_real_disc_labels()
    shapes = [lab.shape for lab in labels]
    perfect = evaluate_real_discs(_Oracle([lab.boxes for lab in labels], shapes),
                                  volumes_dir=REAL_MRI, out_dir=tmp_path)
    assert (perfect.recall, perfect.ap50, perfect.found, perfect.discs) == (1.0, 1.0, 32, 32)
    assert perfect.checkpoint is None and len(perfect.overlays) == 9
    assert perfect.found_at == {0.1: 32, 0.3: 32, 0.5: 32}
    assert [(v.volume, v.discs, v.found[0.5], v.ap50, v.height_ratio, v.width_ratio)
            for v in perfect.volumes] == [("sct_t2_cervical.nii.gz", 12, 12, 1.0, 1.0, 1.0),
                                          ("sct_t1w_cervical.nii.gz", 20, 20, 1.0, 1.0, 1.0)]
    assert all(v.edge_offsets == dict.fromkeys(("superior", "inferior", "anterior",
                                                "posterior"), 0.0) for v in perfect.volumes)
    # Each box moved down by its own height: IoU 0 with its disc, never reaching the next one.
    shifted = [lab.boxes + np.outer(lab.boxes[:, 3] - lab.boxes[:, 1], [0, 1, 0, 1])
               for lab in labels]
    moved = evaluate_real_discs(_Oracle(shifted, shapes), volumes_dir=REAL_MRI)
    assert (moved.recall, moved.ap50, moved.found) == (0.0, 0.0, 0)
    assert moved.overlays == []
    assert moved.found_at == {0.1: 0, 0.3: 0, 0.5: 0}
    assert all(v.matched == 0 and v.height_ratio is None for v in moved.volumes)


@needs_volumes
def test_check_real_command_on_a_random_model(tmp_path, capsys):
    from meddet.engine.checkpoint import make_meta, save_checkpoint
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector("meddet_lite", num_classes=2)
    with torch.no_grad():
        # Spread the class logits so a fresh model reports many detections to score.
        torch.nn.init.normal_(model.head.gfl_cls.weight, std=0.05)
        model.head.gfl_cls.bias.zero_()
    ckpt = save_checkpoint(tmp_path / "model.pt", {
        "model": model.state_dict(),
        "meta": make_meta(model_name="meddet_lite", num_classes=2,
                          class_names=["protrusion", "non-protrusion"], img_size=64)})
    out = tmp_path / "run"
    assert main(["check-real", str(ckpt), "--volumes", str(REAL_MRI), "--out", str(out),
                 "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["recall"] <= 1.0 and 0.0 <= metrics["ap50"] <= 1.0
    assert metrics["discs"] == 32 and metrics["slices"] == 9 and metrics["top_k"] == 10
    assert sum(s["found"] for s in metrics["per_slice"]) == metrics["found"]
    assert metrics["recall"] == pytest.approx(metrics["found"] / 32)
    assert sum(s["detections"] for s in metrics["per_slice"]) > 0
    vols = {v["volume"]: v for v in metrics["volumes"]}
    assert [vols[n]["discs"] for n in ("sct_t2_cervical.nii.gz", "sct_t1w_cervical.nii.gz")] \
        == [12, 20]
    for thr in ("0.1", "0.3", "0.5"):
        assert sum(v["found_at"][thr] for v in vols.values()) == metrics["found_at"][thr] \
            == sum(s["found_at"][thr] for s in metrics["per_slice"])
    assert metrics["found_at"]["0.5"] == metrics["found"]
    assert metrics["found_at"]["0.1"] >= metrics["found_at"]["0.3"] >= metrics["found"]
    printed = capsys.readouterr().out
    for name, v in vols.items():
        edges = v["median_edge_offsets_px"]
        assert (edges is None) == (v["matched"] == 0)
        if edges is not None:  # one console line per volume, the JSON's medians
            short = name.removeprefix("sct_").removesuffix(".nii.gz")
            assert f"{short}: box edges beyond the label" in printed
            assert f"superior {edges['superior']:+.1f}" in printed
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 9 and str(pngs[0]) in metrics["overlays"]
    with Image.open(out / "overlays" / "sct_t2_cervical_slice26.png") as img:
        assert img.size == (60 * 8, 55 * 8)  # enlarged by an integer factor
    assert (metrics["resample"], metrics["input_spacing_mm"]) == ("auto", None)
    assert "does not record" in metrics["preprocessing"]  # stretched as before
    # The 1 mm slices resampled to a pixel size given by hand: 2 mm, i.e. shown at half size.
    assert main(["check-real", str(ckpt), "--volumes", str(REAL_MRI), "--out", str(tmp_path / "s"),
                 "--resample", "spacing", "--input-spacing", "2", "--json",
                 str(tmp_path / "s.json")]) == 0
    spaced = json.loads((tmp_path / "s.json").read_text())
    assert (spaced["resample"], spaced["input_spacing_mm"]) == ("spacing", 2.0)
    assert "2 mm pixels" in spaced["preprocessing"]

    figs = tmp_path / "figs"
    assert main(["check-real", "--labels-only", "--volumes", str(REAL_MRI),
                 "--out", str(figs)]) == 0
    assert sorted(p.name for p in figs.iterdir()) == ["real_discs_t1w_cervical.png",
                                                     "real_discs_t2_cervical.png"]
