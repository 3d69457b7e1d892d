"""Two DDP processes with half a batch each train like one process with the whole batch.

The GFL loss divides QFL by the number of positives and DFL/GIoU by a score-weighted sum; under
``torch.distributed`` those normalisers are the whole job's, so the mean of the ranks' losses and
DDP's averaged gradients must equal the single-process ones on the concatenated batch.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from meddet.models import build_detector

WORLD = 2
IMG = 64
LOSS_KEYS = ("loss", "loss_qfl", "loss_dfl", "loss_giou")
# Boxes per image: the two halves (images 0-1 and 2-3) have different numbers of objects, hence
# different numbers of positives and weight sums, so per-rank normalisers would give a different
# loss; image 2 has none.
BOXES_PER_IMAGE = (1, 3, 0, 2)
# gfl_cls bias: None keeps the 0.01 prior (weight sums below 1, so the clamp of the normaliser
# is active); 0.0 gives scores near 0.5 (weight sums well above the world size).
CLS_BIASES = (None, 0.0)


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(len(BOXES_PER_IMAGE), 3, IMG, IMG, generator=g)
    targets = []
    for n in BOXES_PER_IMAGE:
        xy = torch.rand(n, 2, generator=g) * 24
        wh = 12 + torch.rand(n, 2, generator=g) * 24
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(0, 2, (n,), generator=g)})
    return images, targets


def _model(cls_bias: float | None) -> torch.nn.Module:
    torch.manual_seed(0)
    # norm_eval keeps the backbone's BatchNorm on its running statistics: in batch-statistics
    # mode a half batch is normalised differently from the whole one, which would change the
    # features (not the loss normalisation this test is about). The head uses GroupNorm, which
    # is per image anyway. meddet_lite without nmODE² is the cheapest zoo entry to run.
    model = build_detector("meddet_lite", num_classes=2, nmode="none", norm_eval=True)
    if cls_bias is not None:
        torch.nn.init.constant_(model.head.gfl_cls.bias, cls_bias)
    return model.train()


def _loss_and_grads(model: torch.nn.Module, images, targets):
    losses = model(images, targets)
    losses["loss"].backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
             if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        images, targets = _batch()
        half = len(BOXES_PER_IMAGE) // WORLD
        part = slice(rank * half, (rank + 1) * half)
        out = []
        for bias in CLS_BIASES:
            ddp = DistributedDataParallel(_model(bias))
            out.append(_loss_and_grads(ddp, images[part], targets[part]))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_with_half_batches_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    images, targets = _batch()
    assert not dist.is_initialized()  # the reference runs the no-process-group path
    for i, bias in enumerate(CLS_BIASES):
        ref_losses, ref_grads = _loss_and_grads(_model(bias), images, targets)
        (l0, g0), (l1, g1) = ranks[0][i], ranks[1][i]
        # the halves really differ in what the normalisers count
        assert l0["num_pos"] != l1["num_pos"]
        assert l0["num_pos"] + l1["num_pos"] == ref_losses["num_pos"]
        for k in LOSS_KEYS:
            torch.testing.assert_close((l0[k] + l1[k]) / WORLD, ref_losses[k], rtol=1e-5,
                                       atol=1e-7, msg=f"{k} (cls bias {bias})")
        assert g0.keys() == ref_grads.keys()
        for name, ref in ref_grads.items():
            # DDP leaves the same averaged gradient on every rank
            torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0)
            tol = 1e-5 * float(ref.abs().max()) + 1e-12
            torch.testing.assert_close(g0[name], ref, rtol=1e-4, atol=tol,
                                       msg=f"grad of {name} (cls bias {bias})")
