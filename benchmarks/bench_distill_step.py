"""Step time of ``meddet distill`` against the plain student's, side by side in one process.

Four training steps through the real engine (:class:`~meddet.engine.trainer.Trainer`, the
cpu-small optimiser, grad clipping, AMP and channels_last on CUDA), each on its own copy of
the same student:

* ``plain``: the student alone (the engine's own step, what ``meddet pretrain-teacher`` runs);
* ``distill``: :class:`~meddet.distill.step.DistillStep` with the teachers run on every batch;
* ``distill+cache``: the same with the teacher cache warm (every image of the pool seen once:
  what the epochs after the first few look like);
* ``distill+cache(miss)``: the cache emptied before every step (the first epoch: every image
  computed, plus the cost of storing it).

The steps are interleaved (one of each per round, ``--rounds`` rounds after warm-up) so load
from other processes hits them alike; the medians and their ratios to ``plain`` are printed.
The teachers are zoo detectors with random weights (the step time does not depend on them
having been trained), the images a fixed pool of ``--pool`` batches with two boxes each.

Then, unless ``--no-formats``, one forward pass of the teachers alone in fp32, in
channels_last (CPU) and under bf16 autocast, with the largest difference of their outputs to
fp32 (relative to the largest fp32 magnitude): cheaper teacher passes independent of the cache.

    python benchmarks/bench_distill_step.py --img-size 128 --batch-size 8 --rounds 10
    python benchmarks/bench_distill_step.py --device cuda --rounds 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch

STEPS = ("plain", "distill", "distill+cache", "distill+cache(miss)")


def make_batches(pool: int, batch: int, size: int, seed: int = 0):
    """``pool`` batches of random images with two boxes each and distinct image ids."""
    g = torch.Generator().manual_seed(seed)
    s = size / 256
    boxes = torch.tensor([[40.0, 60.0, 140.0, 200.0], [160.0, 20.0, 240.0, 80.0]]) * s
    out = []
    for b in range(pool):
        images = torch.randn(batch, 3, size, size, generator=g)
        targets = [{"boxes": boxes.clone(), "labels": torch.tensor([0, 1]),
                    "image_id": b * batch + i, "aug_variant": 0} for i in range(batch)]
        out.append((images, targets))
    return out


class _Timer:
    """Seconds of every step of a trainer (the device synchronised at both ends)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: list[float] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_step(self) -> None:
        self.t0 = self._now()

    def after_step(self) -> None:
        self.times.append(self._now() - self.t0)


def build(kind: str, a, teachers, batches, device):
    """A trainer running ``kind`` steps over ``batches`` (repeated), and its step timer."""
    from meddet.config import DistillConfig
    from meddet.distill.cache import TeacherCache
    from meddet.distill.methods import build_method
    from meddet.distill.step import DistillStep
    from meddet.engine.schedule import build_optimizer
    from meddet.engine.trainer import HookBase, Trainer
    from meddet.models import build_detector

    torch.manual_seed(0)
    cl = device.type == "cuda"
    student = build_detector(a.student, num_classes=2).to(device).train()
    if cl:
        student = student.to(memory_format=torch.channels_last)
    params = [p for p in student.parameters() if p.requires_grad]
    step_fn = None
    if kind != "plain":
        method = build_method(DistillConfig(method=a.method, student=a.student),
                              student=student, teachers=teachers).to(device)
        params += method.student_parameters()
        cache = None
        if kind.startswith("distill+cache"):
            cache = TeacherCache(wanted=method.teacher_outputs, max_bytes=2**40,
                                 channels_last=cl)
        step_fn = DistillStep(method=method, teachers=teachers, cache=cache)
        if kind == "distill+cache(miss)":
            inner = step_fn

            def step_fn(trainer, _inner=inner):
                _inner.cache.clear()
                _inner(trainer)

    timer = _Timer(device)

    class Hook(HookBase):
        def before_step(self) -> None:
            timer.before_step()

        def after_step(self) -> None:
            timer.after_step()

    # The cpu-small recipe's optimiser (AdamW) and the engine's grad clipping.
    opt = build_optimizer(params, lr=1e-3, momentum=0.9, weight_decay=0.05, kind="adamw")
    total = len(batches) + a.rounds * a.iters
    loader = [batches[i % len(batches)] for i in range(total)]
    trainer = Trainer(student, opt, loader, iters_per_epoch=total, max_iters=0, hooks=[Hook()],
                      device=device, amp=True, channels_last=True, grad_clip=35.0,
                      step_fn=step_fn)
    return trainer, timer


def run_steps(trainer, n: int) -> None:
    """``n`` more steps of ``trainer``."""
    trainer.max_iters += n
    trainer.train()


def bench_steps(a, teachers, device) -> dict[str, float]:
    batches = make_batches(a.pool, a.batch_size, a.img_size)
    names = [s for s in STEPS if s in a.steps.split(",")]
    runs = {k: build(k, a, teachers, batches, device) for k in names}
    for trainer, _ in runs.values():  # warm-up: one pass over the pool fills the cache
        run_steps(trainer, len(batches))
    for _, timer in runs.values():
        timer.times.clear()
    for _ in range(a.rounds):
        for trainer, _ in runs.values():
            run_steps(trainer, a.iters)
    return {k: statistics.median(t.times) for k, (_, t) in runs.items()}


def bench_formats(a, teachers, device) -> None:
    """The teachers' forward pass alone in fp32, channels_last and bf16 autocast."""
    x = make_batches(1, a.batch_size, a.img_size)[0][0].to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def forward(models, inp, dtype):
        ctx = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            return [m.forward_raw(inp) for m in models]

    fp32 = forward(teachers, x, None)
    variants = {"fp32": (teachers, x, None), "bf16 autocast": (teachers, x, torch.bfloat16)}
    if device.type == "cpu":
        cl = [copy.deepcopy(t).to(memory_format=torch.channels_last) for t in teachers]
        variants["channels_last"] = (cl, x.contiguous(memory_format=torch.channels_last), None)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(max(3, a.rounds)):
        for k, (models, inp, dtype) in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward(models, inp, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32"])
    print("\nteachers' forward pass alone (median)   ms     x fp32   max |diff| / max |fp32|")
    for k, (models, inp, dtype) in variants.items():
        out = forward(models, inp, dtype)
        err = 0.0
        for (fa, ca, ba), (fb, cb, bb) in zip(fp32, out):
            for ta, tb in zip([*fa, *ca, *ba], [*fb, *cb, *bb]):
                err = max(err, float((ta.float() - tb.float()).abs().max() / ta.abs().max()))
        med = statistics.median(times[k])
        print(f"  {k:<37} {1e3 * med:7.1f}  {med / base:6.2f}   {err:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--student", default="meddet")
    ap.add_argument("--method", default="meddet", help="a method with teachers (meddet, mgd, "
                    "ld, fgd)")
    ap.add_argument("--teachers", default="gfl_r50,gfl_r101,gfl_r152",
                    help="zoo names (the method's single-teacher baselines use the first)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument("--iters", type=int, default=1, help="steps of each kind per round")
    ap.add_argument("--pool", type=int, default=4, help="batches of distinct images")
    ap.add_argument("--steps", default=",".join(STEPS), help="which steps to time")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-formats", action="store_true",
                    help="skip the teachers' fp32 / channels_last / bf16 comparison")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from meddet.distill.methods import get_method
    from meddet.models import build_detector

    device = torch.device(a.device)
    names = a.teachers.split(",")
    if get_method(a.method).num_teachers == 1:
        names = names[:1]
    teachers = []
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        t = build_detector(name, num_classes=2).to(device).eval().requires_grad_(False)
        if device.type == "cuda":
            t = t.to(memory_format=torch.channels_last)
        teachers.append(t)
    print(f"{a.method}: {a.student} from {', '.join(names)}; {a.img_size} px, batch "
          f"{a.batch_size}, device {device}, {torch.get_num_threads()} threads, "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}; median of "
          f"{a.rounds * a.iters} interleaved steps each")
    med = bench_steps(a, teachers, device)
    base = med.get("plain")
    print("step                     ms/step   x plain")
    for k, v in med.items():
        ratio = f"{v / base:7.2f}" if base else "      -"
        print(f"  {k:<22} {1e3 * v:8.1f}   {ratio}")
    if not a.no_formats:
        bench_formats(a, teachers, device)


if __name__ == "__main__":
    main()
