"""COCO evaluation: inference over a dataset, pycocotools metrics, confusion matrix.

Every number reported here is read from pycocotools' ``COCOeval`` (bbox) so it equals what
pycocotools prints for the same detections, to the last digit:

- ``mAP``, ``mAP50``, ``mAP75``, ``AR100``: ``COCOeval.stats[0, 1, 2, 8]``; per class, the same
  reductions as ``COCOeval.summarize`` applied to that class's slice of the precision / recall
  arrays (identical to running COCOeval with ``catIds=[that class]``).
- ``recall`` (displayed as :data:`RECALL_LABEL`): the share of *all* ground-truth boxes matched
  at IoU 0.5 among each image's top 100 detections, pooled over classes, counted from
  ``COCOeval.evalImgs`` (area ``all``); per class it equals
  ``COCOeval.eval["recall"][IoU=.5, k, all, 100]``. It is not COCO's ``AR100``, which averages
  over classes and over IoU 0.5:0.95. The paper reports a recall without defining it; this
  definition is ours.
- ``class_agnostic``: ``{"mAP", "mAP50", "recall"}`` of the same detections with the classes
  ignored (``COCOeval.params.useCats = 0``): how well the objects are *found*, whatever class
  they are given. For a two-class detector that finds every disc but cannot yet tell the classes
  apart, ``mAP50`` stays near the mean of the classes' shares while this reads near 1.

Following pycocotools, a metric that is undefined (no ground truth for a class) is ``-1``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from meddet.engine.distributed import ResumableSampler, all_gather_object, get_rank, get_world_size
from meddet.errors import MedDetError

#: Keys of the overall metrics, in display order.
METRIC_KEYS = ("mAP", "mAP50", "mAP75", "AR100", "recall")
#: How tables name the ``recall`` key: matched at IoU 0.5, top 100 detections, pooled classes.
RECALL_LABEL = "recall@.5"
#: Column headers for :data:`METRIC_KEYS`.
METRIC_LABELS = {"mAP": "mAP", "mAP50": "mAP50", "mAP75": "mAP75", "AR100": "AR100",
                 "recall": RECALL_LABEL}


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    # pycocotools prints progress ("Loading and preparing results...", the summary table);
    # the CLI prints its own table, and --json - needs a clean stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _mean_valid(arr: np.ndarray) -> float:
    # Exactly COCOeval.summarize's reduction: the mean over entries > -1, or -1 if none.
    valid = arr[arr > -1]
    return -1.0 if len(valid) == 0 else float(np.mean(valid))


def _load_results(coco_gt: Any, results: list[dict]) -> Any:
    from pycocotools.coco import COCO

    if results:
        with _quiet():
            return coco_gt.loadRes(copy.deepcopy(results))
    # loadRes indexes results[0] and crashes on an empty list; an empty result set is a valid
    # (if poor) detector output, so build the empty COCO object pycocotools would have built.
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                   "annotations": []}
    with _quiet():
        res.createIndex()
    return res


def run_cocoeval(coco_gt: Any, results: list[dict], *, img_ids: Sequence[int] | None = None,
                 use_cats: bool = True) -> Any:
    """Run pycocotools' bbox COCOeval (evaluate, accumulate, summarize) quietly.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` with the ground truth.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            not modified.
        img_ids: images to evaluate; default all images of ``coco_gt`` (so images without any
            detection still count their ground truth as missed).
        use_cats: False matches detections to ground truth whatever their classes.

    Returns:
        The ``COCOeval`` object after ``summarize()``.
    """
    from pycocotools.cocoeval import COCOeval

    coco_dt = _load_results(coco_gt, results)
    E = COCOeval(coco_gt, coco_dt, iouType="bbox")
    E.params.imgIds = sorted(img_ids if img_ids is not None else coco_gt.getImgIds())
    E.params.useCats = int(use_cats)
    with _quiet():
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def _iou_index(E: Any, thr: float) -> int:
    return int(np.where(E.params.iouThrs == thr)[0][0])


def _matched_gt_at_50(E: Any, cat_id: int | None) -> tuple[int, int]:
    """(matched, total) non-ignored ground-truth boxes at IoU 0.5, area all, top-100."""
    t = _iou_index(E, 0.5)
    all_rng = list(E.params.areaRng[E.params.areaRngLbl.index("all")])
    matched = total = 0
    for e in E.evalImgs:
        if e is None or list(e["aRng"]) != all_rng:
            continue
        if cat_id is not None and e["category_id"] != cat_id:
            continue
        keep = ~np.asarray(e["gtIgnore"], dtype=bool)
        total += int(keep.sum())
        if e["gtMatches"].size:
            matched += int(np.logical_and(e["gtMatches"][t] != 0, keep).sum())
    return matched, total


def summarize_cocoeval(E: Any, class_names: Sequence[str], cat_ids: Sequence[int]) -> dict[str, Any]:
    """Overall and per-class metrics from a finished ``COCOeval`` (see the module docstring)."""
    p = E.params
    a = p.areaRngLbl.index("all")
    m = p.maxDets.index(100)
    t50, t75 = _iou_index(E, 0.5), _iou_index(E, 0.75)
    precision, recall_arr = E.eval["precision"], E.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]
    matched, total = _matched_gt_at_50(E, None)
    out: dict[str, Any] = {
        "mAP": float(E.stats[0]), "mAP50": float(E.stats[1]), "mAP75": float(E.stats[2]),
        "AR100": float(E.stats[8]), "recall": matched / total if total else -1.0,
        "per_class": {},
    }
    for name, cat in zip(class_names, cat_ids):
        k = list(p.catIds).index(cat)
        c_matched, c_total = _matched_gt_at_50(E, cat)
        out["per_class"][name] = {
            "mAP": _mean_valid(precision[:, :, k, a, m]),
            "mAP50": _mean_valid(precision[t50, :, k, a, m]),
            "mAP75": _mean_valid(precision[t75, :, k, a, m]),
            "AR100": _mean_valid(recall_arr[:, k, a, m]),
            "recall": c_matched / c_total if c_total else -1.0,
            "num_gt": c_total,
        }
    return out


def evaluate_coco(coco_gt: Any, results: list[dict], class_names: Sequence[str],
                  cat_ids: Sequence[int], *, img_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO bbox metrics of ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth as a ``pycocotools.coco.COCO``.
        results: COCO results list (may be empty).
        class_names: names in label order; keys of ``per_class``.
        cat_ids: the COCO category id of each name.
        img_ids: images evaluated (default: all in ``coco_gt``).

    Returns:
        ``{"mAP", "mAP50", "mAP75", "AR100", "recall", "per_class": {name: {...}},
        "class_agnostic": {"mAP", "mAP50", "recall"}, "num_images"}`` with plain floats.
    """
    E = run_cocoeval(coco_gt, results, img_ids=img_ids)
    out = summarize_cocoeval(E, class_names, cat_ids)
    A = run_cocoeval(coco_gt, results, img_ids=img_ids, use_cats=False)
    matched, total = _matched_gt_at_50(A, None)
    out["class_agnostic"] = {"mAP": float(A.stats[0]), "mAP50": float(A.stats[1]),
                             "recall": matched / total if total else -1.0}
    out["num_images"] = len(E.params.imgIds)
    return out


def validate_results(results: Any, coco_gt: Any, *, source: str = "predictions") -> list[dict]:
    """Check a COCO results list against the ground truth before evaluating it.

    Raises:
        MedDetError: not a list of objects, a missing/ill-typed field, a non-finite or negative
            box, or an ``image_id`` / ``category_id`` the dataset does not have (the message names
            the first offending value and how many entries are affected).
    """
    if not isinstance(results, list):
        raise MedDetError(f"{source} must be a JSON list of COCO detections, got "
                          f"{type(results).__name__}")
    img_ids = set(coco_gt.getImgIds())
    cat_ids = set(coco_gt.getCatIds())
    bad_img: list[Any] = []
    bad_cat: list[Any] = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise MedDetError(f"{source} entry {i} is not an object")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in r:
                raise MedDetError(f"{source} entry {i} has no {key!r}; COCO results need image_id, "
                                  "category_id, bbox [x, y, w, h] and score")
        box = r["bbox"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
                or box[2] < 0 or box[3] < 0):
            raise MedDetError(f"{source} entry {i} has an invalid bbox {box!r}; expected "
                              "[x, y, width, height] with finite values and width, height >= 0")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise MedDetError(f"{source} entry {i} has an invalid score {r['score']!r}")
        if r["image_id"] not in img_ids:
            bad_img.append(r["image_id"])
        if r["category_id"] not in cat_ids:
            bad_cat.append(r["category_id"])
    if bad_img:
        raise MedDetError(f"{source} has {len(bad_img)} detections with image ids not in this split "
                          f"(first: {bad_img[0]!r}); were they made on another split or dataset?")
    if bad_cat:
        raise MedDetError(f"{source} has {len(bad_cat)} detections with unknown category ids "
                          f"(first: {bad_cat[0]!r}); the dataset's ids are {sorted(cat_ids)}")
    return results


def detections_to_coco(outputs: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int],
                       cat_ids: Sequence[int], *, score_thr: float = 0.0) -> list[dict]:
    """Turn model outputs into COCO results.

    Args:
        outputs: per image ``{"boxes": [K,4] xyxy original pixels, "scores": [K],
            "labels": [K] 0-based}``.
        image_ids: the COCO image id of each output.
        cat_ids: COCO category id of each label.
        score_thr: drop detections scoring below this.

    Boxes are rounded to 0.01 px and scores to 1e-5 *before* evaluation, so the saved
    ``predictions.json`` re-evaluates (``meddet eval --predictions``) to identical numbers.
    """
    results: list[dict] = []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu().tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels):
            if s < score_thr:
                continue
            results.append({
                "image_id": int(img_id),
                "category_id": int(cat_ids[int(lab)]),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(s), 5),
            })
    return results


def _to_device(images: torch.Tensor, targets: list[dict], device: torch.device,
               channels_last: bool = False) -> tuple[torch.Tensor, list[dict]]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    moved = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
              for k, v in t.items()} for t in targets]
    return images, moved


@torch.inference_mode()
def predict_dataset(model: torch.nn.Module, dataset: Any, *, device: torch.device | str = "cpu",
                    batch_size: int = 8, workers: int = 0, score_thr: float = 0.0,
                    channels_last: bool = False) -> list[dict]:
    """Run ``model`` over ``dataset`` and return COCO results for every image.

    Under torchrun each rank predicts its share of the images and the results are gathered, so
    every rank returns the full list (sorted by image id, then score, for determinism).

    Args:
        model: a detector; switched to eval mode for the call and restored afterwards.
        dataset: a ``meddet.data.CocoDetection`` (``train=False``).
        device: where to run.
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        score_thr: drop detections below this score.
        channels_last: feed NHWC tensors (CUDA speed-up).
    """
    from meddet.data import collate

    device = torch.device(device)
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=get_rank(),
                               world_size=get_world_size())
    # An explicit generator keeps DataLoader from drawing its worker seed from the global RNG,
    # which would make training's random stream depend on whether/when evaluation ran.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         num_workers=workers, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0),
                                         pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        for images, targets in loader:
            images, targets = _to_device(images, targets, device, channels_last)
            outputs = model(images, targets)
            results += detections_to_coco(outputs, [t["image_id"] for t in targets],
                                          dataset.cat_ids, score_thr=score_thr)
    finally:
        model.train(was_training)
    gathered = [r for part in all_gather_object(results) for r in part]
    gathered.sort(key=lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"]))
    return gathered


def confusion_matrix(coco_gt: Any, results: list[dict], cat_ids: Sequence[int], *,
                     iou_thr: float = 0.5, score_thr: float = 0.05) -> np.ndarray:
    """Counts of ground truth versus detections at one IoU and score threshold.

    Rows are the true class (each class, then ``background`` for detections with no ground
    truth); columns the predicted class (each class, then ``missed`` for ground truth with no
    detection). Detections at or above ``score_thr`` are matched to ground truth greedily by
    score, first within the same class, then across classes (those are the confusions).
    Crowd annotations are ignored.

    Returns:
        ``int64`` array of shape ``[C + 1, C + 1]``; the ``[background, missed]`` cell is 0.
    """
    from pycocotools import mask as mask_utils

    index = {c: i for i, c in enumerate(cat_ids)}
    n = len(cat_ids)
    cm = np.zeros((n + 1, n + 1), dtype=np.int64)
    by_img: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_thr and r["category_id"] in index:
            by_img.setdefault(r["image_id"], []).append(r)
    for img_id in coco_gt.getImgIds():
        gts = [g for g in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=img_id))
               if not g.get("iscrowd", 0) and g["category_id"] in index]
        dts = sorted(by_img.get(img_id, []), key=lambda r: -r["score"])
        g_cls = [index[g["category_id"]] for g in gts]
        d_cls = [index[d["category_id"]] for d in dts]
        ious = (mask_utils.iou([d["bbox"] for d in dts], [g["bbox"] for g in gts],
                               [0] * len(gts)) if gts and dts else np.zeros((len(dts), len(gts))))
        ious = np.asarray(ious).reshape(len(dts), len(gts))
        g_used = [False] * len(gts)
        d_used = [False] * len(dts)
        for same_class in (True, False):
            for di in range(len(dts)):
                if d_used[di]:
                    continue
                best, best_iou = -1, iou_thr
                for gi in range(len(gts)):
                    if g_used[gi] or (same_class and g_cls[gi] != d_cls[di]):
                        continue
                    if ious[di, gi] >= best_iou:
                        best, best_iou = gi, ious[di, gi]
                if best >= 0:
                    g_used[best] = d_used[di] = True
                    cm[g_cls[best], d_cls[di]] += 1
        for gi, used in enumerate(g_used):
            if not used:
                cm[g_cls[gi], n] += 1
        for di, used in enumerate(d_used):
            if not used:
                cm[n, d_cls[di]] += 1
    return cm


def pr_curves(E: Any, class_names: Sequence[str], cat_ids: Sequence[int],
              iou_thr: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-class precision-recall curves from COCOeval's interpolated precision.

    Returns:
        ``{name: (recall thresholds [101], precision [101])}`` at IoU ``iou_thr``, area all,
        100 detections; points where precision is undefined are NaN.
    """
    p = E.params
    t = _iou_index(E, iou_thr)
    a = p.areaRngLbl.index("all")
    m = p.maxDets.index(100)
    out = {}
    for name, cat in zip(class_names, cat_ids):
        k = list(p.catIds).index(cat)
        prec = E.eval["precision"][t, :, k, a, m].astype(float)
        prec[prec < 0] = np.nan
        out[name] = (np.asarray(p.recThrs, dtype=float), prec)
    return out
