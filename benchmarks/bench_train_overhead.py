"""Per-iteration CPU overhead of a training step: aten op count, would-be host syncs, wall time.

On a GPU the cpu-small recipe is launch/CPU-bound (every model trains at the same speed), so
what matters is how much host work one iteration does besides the convolutions. This script
measures it on the CPU, for a few zoo detectors, through the real engine
(:meth:`meddet.engine.trainer.Trainer.run_step`: forward, GFL loss with ATSS assignment,
backward, AdamW step and the trainer's non-finite guard and loss logging):

* ``ops/iter``: aten operator calls per iteration (forward, backward and the optimiser,
  counted with a ``TorchDispatchMode``); each is at least one kernel launch on CUDA.
* ``sync ops``: calls that block the host on CUDA: ``_local_scalar_dense`` (``.item()``,
  ``float()``, ``bool()`` of a tensor), ``nonzero`` (also behind boolean-mask indexing),
  ``masked_select`` and ``unique``. Host-to-device copies of CPU-made tensors are not visible on
  the CPU and are not counted.
* ``loss ms``: ``model.loss`` alone (ATSS assignment, target building, QFL/DFL/GIoU) on
  fixed head outputs; ``assign ms``: ``model.assign`` alone; ``iter ms``: a full
  ``Trainer.run_step``. Medians of ``--iters`` runs after warm-up, one thread.

Batches come from the synthetic dataset (``--data``, default ``.whl/data``; 6 boxes per image)
resized to ``--img-size`` and loaded once, so data loading is timed separately (``data ms``,
one batch of the augmented training pipeline with ``workers=0``).

    python benchmarks/bench_train_overhead.py --img-size 128 --batch-size 8 --iters 10
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique")


class OpCounter(TorchDispatchMode):
    """Counts aten calls while active, split by phase (``model`` or ``optimizer``).

    Only top-level calls are seen (what an op does inside its kernel is not), so boolean-mask
    indexing, whose ``nonzero`` is internal, is recognised from its arguments.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = "model"
        self.counts: dict[str, collections.Counter[str]] = {
            "model": collections.Counter(), "optimizer": collections.Counter()}
        self.sync_counts: dict[str, collections.Counter[str]] = {
            "model": collections.Counter(), "optimizer": collections.Counter()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        self.counts[self.phase][name] += 1
        if name.startswith(SYNC_OPS):
            self.sync_counts[self.phase][name] += 1
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self.sync_counts[self.phase][f"{name}[bool mask]"] += 1
        return func(*args, **(kwargs or {}))

    def add_host_copy(self, what: str) -> None:
        self.sync_counts[self.phase][what] += 1


_ACTIVE: list[OpCounter] = []


def _count_host_copies() -> None:
    """Count ``.tolist()``/``.cpu()``/``.numpy()``: device-to-host copies on CUDA, invisible to
    a dispatch mode on the CPU."""
    for meth in ("tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, meth)

        def wrapper(self, *a, _real=real, _name=meth, **kw):
            if _ACTIVE:
                _ACTIVE[-1].add_host_copy(f".{_name}()")
            return _real(self, *a, **kw)

        setattr(torch.Tensor, meth, wrapper)


def load_batches(root: Path, img_size: int, batch: int, n: int, augment: bool):
    from meddet.config import load_config
    from meddet.data import CocoDetection, collate

    cfg = load_config("cpu-small")
    ds = CocoDetection(root, "train", img_size=img_size, train=augment,
                       augment=cfg.data.augmentation if augment else None, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=0,
                                         collate_fn=collate)
    it = iter(loader)
    out, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        out.append(next(it))
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def median_ms(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_model(name: str, batches, a) -> dict:
    from meddet.engine.schedule import build_optimizer
    from meddet.engine.trainer import HookBase, Trainer
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector(name, num_classes=2).train()
    # The cpu-small optimiser. On the CPU AdamW runs per tensor (~10 ops per parameter); on
    # CUDA it defaults to the foreach implementation (~10 ops per step), so its ops are
    # reported apart.
    opt = build_optimizer(model, lr=1e-4, momentum=0.9, weight_decay=0.05, kind="adamw")
    counter = OpCounter()

    def set_phase(phase):
        def hook(*_):
            counter.phase = phase
        return hook

    opt.register_step_pre_hook(set_phase("optimizer"))
    opt.register_step_post_hook(set_phase("model"))

    class Probe(HookBase):
        """Counts the ops of iteration 2 and times iterations 3.. (0 and 1 warm up)."""

        def __init__(self) -> None:
            self.step_times: list[float] = []

        def before_step(self) -> None:
            if self.trainer.iter == 2:
                counter.__enter__()
                _ACTIVE.append(counter)
            self._t0 = time.perf_counter()

        def after_step(self) -> None:
            dt = time.perf_counter() - self._t0
            if self.trainer.iter == 2:
                _ACTIVE.pop()
                counter.__exit__(None, None, None)
            elif self.trainer.iter > 2:
                self.step_times.append(dt)

    probe = Probe()
    n = a.iters + 3
    loader = [batches[i % len(batches)] for i in range(n)]
    # The cpu-small recipe's trainer settings (grad_clip 35, AMP/channels_last are CUDA-only).
    trainer = Trainer(model, opt, loader, iters_per_epoch=n, max_iters=n, hooks=[probe],
                      grad_clip=35.0)
    trainer.train()

    images, targets = batches[0]
    with torch.no_grad():
        _, cls, reg = model.forward_raw(images)
    cls = [c.detach().requires_grad_() for c in cls]
    reg = [r.detach().requires_grad_() for r in reg]
    shape = (images.shape[-2], images.shape[-1])
    loss_ms = median_ms(lambda: model.loss(cls, reg, targets, shape), a.iters)
    assign_ms = median_ms(lambda: model.assign(cls, targets, shape), a.iters)
    loss_counter = OpCounter()
    with loss_counter:
        _ACTIVE.append(loss_counter)
        out = model.loss(cls, reg, targets, shape)
        out["loss"].backward()
        _ACTIVE.pop()
    return {"model": name, "ops": sum(counter.counts["model"].values()),
            "opt_ops": sum(counter.counts["optimizer"].values()),
            "syncs": dict(counter.sync_counts["model"]),
            "loss_ops": sum(loss_counter.counts["model"].values()),
            "loss_syncs": dict(loss_counter.sync_counts["model"]),
            "iter_ms": 1e3 * statistics.median(probe.step_times), "loss_ms": loss_ms,
            "assign_ms": assign_ms, "top": counter.counts["model"].most_common(a.top),
            "loss_top": loss_counter.counts["model"].most_common(a.top)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gfl_mbv2,gfl_r50")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".whl" / "data"))
    ap.add_argument("--top", type=int, default=0, help="also list the N most frequent ops")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import meddet

    batches, _ = load_batches(Path(a.data), a.img_size, a.batch_size, 2, augment=False)
    _, data_s = load_batches(Path(a.data), a.img_size, a.batch_size, 3, augment=True)
    nbox = [len(t["boxes"]) for _, b in batches for t in b]
    print(f"meddet from {Path(meddet.__file__).parent}; torch {torch.__version__}, "
          f"{a.threads} thread(s); {a.img_size} px, batch {a.batch_size}, boxes/image "
          f"{min(nbox)}-{max(nbox)}; data loading (augmented, workers=0) "
          f"{1e3 * data_s:.1f} ms/batch")
    print("ops: aten calls per training iteration without the optimiser step (opt ops: the "
          "step, per-tensor on CPU); syncs: calls that block the host on CUDA; loss: model.loss "
          "+ its backward on fixed head outputs")
    print(f"{'model':10} {'ops/iter':>8} {'opt ops':>7} {'syncs/iter':>10} {'loss ops':>8} "
          f"{'loss syncs':>10} {'iter ms':>8} {'loss ms':>8} {'assign ms':>9}")
    _count_host_copies()
    for name in a.models.split(","):
        r = bench_model(name, batches, a)
        print(f"{r['model']:10} {r['ops']:8d} {r['opt_ops']:7d} {sum(r['syncs'].values()):10d} "
              f"{r['loss_ops']:8d} {sum(r['loss_syncs'].values()):10d} {r['iter_ms']:8.1f} "
              f"{r['loss_ms']:8.2f} {r['assign_ms']:9.2f}")
        print(f"{'':10} syncs per iteration: {dict(sorted(r['syncs'].items()))}")
        print(f"{'':10} loss+backward syncs: {dict(sorted(r['loss_syncs'].items()))}")
        if r["top"]:
            print(f"{'':10} top ops (iteration): {r['top']}")
            print(f"{'':10} top ops (loss+backward): {r['loss_top']}")


if __name__ == "__main__":
    main()
