"""Where a trained detector stands: fitting or generalising, BatchNorm statistics, positives.

For each checkpoint (e.g. ``best.pt`` of a run, or ``last.pt`` with ``--weights train`` for the
trained weights of a weight-EMA run) it prints one JSON line with:

- ``train`` / ``test``: COCO mAP and mAP50 on the training split (without augmentation) and on
  the test split. Equal scores mean the model underfits: more data or regularisation would not
  help, more (or better) optimisation would.
- ``precise_bn``: test mAP / mAP50 after re-estimating every BatchNorm's running statistics on
  the training images (the stored statistics lag weights that moved fast; a large change here
  would point at the statistics, not at the weights).
- ``positives``: on the test split, ATSS positives per object, the mean predicted score of the
  positives for their own class (``score_own``) and for the other classes (``score_other``,
  summed), the mean IoU of their decoded boxes with their object (``iou``), and the mean of
  each image's ten best non-positive scores (``top_negatives``). ``score_own ≈ score_other``
  means the classes are not told apart yet.

Usage::

    python benchmarks/diagnose_training.py CKPT [CKPT ...] --data D [--weights ema|train]
        [--threads 2] [--no-precise-bn]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from meddet.data import CocoDetection, collate
from meddet.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from meddet.engine.evaluate import evaluate_model
from meddet.models.box_ops import aligned_iou, distance2bbox, integral


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(metrics[k]), 4) for k in ("mAP", "mAP50")}


@torch.no_grad()
def positives(model: torch.nn.Module, ds: CocoDetection) -> dict[str, float]:
    """Statistics of the ATSS positives of ``ds`` under ``model`` (in eval mode)."""
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in
                                           ("score_own", "score_other", "iou", "top_negatives")}
    objects = locations = 0
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)
    for images, targets in loader:
        cls, reg = model.head(list(model.neck(model.backbone(images))))
        asg = model.assign(cls, targets, tuple(images.shape[-2:]))
        cls_flat, reg_flat = model.flatten_outputs(cls, reg)
        prob = cls_flat.sigmoid()  # [B, A, C]
        pos = asg.pos_mask  # [B, A]
        stride = asg.strides[:, None]
        boxes = distance2bbox(asg.points / stride, integral(reg_flat, model.reg_max))
        iou = aligned_iou(boxes, asg.boxes / stride)
        own = prob.gather(-1, asg.labels.clamp(max=prob.shape[-1] - 1)[..., None])[..., 0]
        sums["score_own"].append(own[pos])
        sums["score_other"].append((prob.sum(-1) - own)[pos])
        sums["iou"].append(iou[pos])
        for b in range(prob.shape[0]):
            sums["top_negatives"].append(prob[b].amax(-1)[~pos[b]].topk(10).values)
        objects += sum(len(t["boxes"]) for t in targets)
        locations += int(pos.sum())
    out = {k: round(torch.cat(v).mean().item(), 4) for k, v in sums.items()}
    return {"per_object": round(locations / max(objects, 1), 2), **out}


@torch.no_grad()
def precise_bn(model: torch.nn.Module, ds: CocoDetection, batches: int = 25) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over ``batches`` batches."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    for i, (images, _) in enumerate(loader):
        if i >= batches:
            break
        model.backbone(images)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", choices=("ema", "train"), default="ema",
                    help="a weight-EMA checkpoint's average (its 'model', default) or its "
                    "trained weights ('train_model')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-precise-bn", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        if args.weights == "train":
            if "train_model" not in ckpt:
                raise SystemExit(f"{path} has no trained weights apart from 'model' (not a "
                                 "weight-EMA run); use --weights ema")
            ckpt = {**ckpt, "model": ckpt["train_model"]}
        model, meta = build_model_from_checkpoint(ckpt, torch.device("cpu"), score_thr=0.0)
        size = int(meta["img_size"])
        train = CocoDetection(args.data, "train", img_size=size)
        test = CocoDetection(args.data, "test", img_size=size)
        row: dict[str, Any] = {"checkpoint": path, "weights": args.weights}
        row["train"] = _scores(evaluate_model(model, train)[1])
        row["test"] = _scores(evaluate_model(model, test)[1])
        row["positives"] = positives(model, test)
        if not args.no_precise_bn:
            precise_bn(model, train)
            row["precise_bn"] = _scores(evaluate_model(model, test)[1])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
