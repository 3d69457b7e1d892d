"""The training loop: hook order, exact resume, the non-finite guard, the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from meddet.engine import distributed as du
from meddet.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    make_meta,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from meddet.engine.hooks import CheckpointHook, LRSchedulerHook, ResultsHook
from meddet.engine.schedule import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    milestones_from_fractions,
)
from meddet.engine.trainer import HookBase, NonFiniteLossError, Trainer


class TinyData(torch.utils.data.Dataset):
    """Random images; the "augmentation" draws from the global torch RNG like a real pipeline."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        img = torch.rand(3, 8, 8, generator=g) + 0.1 * torch.rand(3, 8, 8)
        return img, {"labels": torch.tensor([i % 2]), "image_id": i}


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class TinyDet(nn.Module):
    """Honours the detector training contract: ``model(images, targets) -> {"loss", ...}``."""

    def __init__(self, nan_after: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)  # consumes the torch RNG every step
        self.fc = nn.Linear(4, 2)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        x = self.drop(self.conv(images).mean((2, 3)))
        logits = self.fc(x)
        labels = torch.cat([t["labels"] for t in targets])
        ce = nn.functional.cross_entropy(logits, labels)
        reg = (self.conv.weight ** 2).mean()
        loss = ce + reg
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float("nan")
        return {"loss": loss, "loss_ce": ce, "loss_reg": reg}


def make_trainer(run_dir, *, max_iters=6, every_iters=None, nan_after=None, hooks=(),
                 every_epochs=1, pre_hooks=()):
    seed_everything(0)
    model = TinyDet(nan_after=nan_after)
    ds = TinyData()
    sampler = du.ResumableSampler(len(ds), shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate,
                                         generator=torch.Generator())
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    ipe = math.ceil(len(ds) / 2)
    sched = build_scheduler(opt, total_iters=2 * ipe, lr_steps=(0.5,), warmup_iters=2,
                            warmup_ratio=0.1)
    meta = make_meta(model_name="tiny", num_classes=2, class_names=["a", "b"], img_size=8)
    all_hooks = [LRSchedulerHook(), *pre_hooks, ResultsHook(run_dir, plot=False),
                 CheckpointHook(run_dir, meta, every_epochs=every_epochs,
                                every_iters=every_iters), *hooks]
    return Trainer(model, opt, loader, iters_per_epoch=ipe, max_iters=max_iters, scheduler=sched,
                   hooks=all_hooks, grad_clip=35.0)


def test_hook_order_and_epoch_boundaries(tmp_path):
    calls = []

    class Recorder(HookBase):
        def before_train(self):
            calls.append("before_train")

        def before_epoch(self):
            calls.append(f"before_epoch{self.trainer.epoch}")

        def after_step(self):
            calls.append(f"step{self.trainer.iter}")

        def after_epoch(self):
            calls.append(f"after_epoch@{self.trainer.iter}")

        def after_train(self):
            calls.append("after_train")

    t = make_trainer(tmp_path, max_iters=4, hooks=[Recorder()])
    t.train()
    # 3 iterations per epoch; the cap at 4 closes a partial second epoch.
    assert calls == ["before_train", "before_epoch0", "step0", "step1", "step2", "after_epoch@3",
                     "before_epoch1", "step3", "after_epoch@4", "after_train"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["epoch", "iter", "loss", "loss_ce", "loss_reg"]
    assert len(rows) == 3 and rows[2].startswith("2,4,")


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "a", max_iters=6)
    straight.train()

    # Interrupted after iteration 4 (mid-epoch: 3 per epoch), via a mid-epoch checkpoint.
    first = make_trainer(tmp_path / "b", max_iters=4, every_iters=1)
    first.train()
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["iter"] == 4 and ckpt["epoch"] == 1
    torch.manual_seed(1234)  # a resumed process starts with unrelated RNG states
    second = make_trainer(tmp_path / "b", max_iters=6)
    second.load_state_dict(ckpt)
    second.train()

    a = straight.model.state_dict()
    b = second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]
    # The resumed history (loss means, lr) is identical too, including the resumed epoch.
    ha, hb = straight.storage.history, second.storage.history
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]
    assert [r["lr"] for r in ha] == [r["lr"] for r in hb]


def test_mid_epoch_checkpoint_not_duplicated_at_epoch_end(tmp_path):
    t = make_trainer(tmp_path, max_iters=6, every_iters=2)
    t.train()
    ck = next(h for h in t.hooks if isinstance(h, CheckpointHook))
    # iteration 2 (mid-epoch) by every_iters, 3 and 6 by the epoch ends; 4 mid-epoch.
    assert ck.saved.count("last.pt") == 4


class FakeScores(HookBase):
    """Puts a given val mAP50 into each epoch's row (in place of an evaluation hook)."""

    def __init__(self, scores):
        self.scores = scores

    def after_epoch(self):
        self.trainer.storage.put_epoch(mAP50=self.scores[self.trainer.epoch])


def test_checkpoint_every_epochs_writes_last_less_and_best_always(tmp_path):
    t = make_trainer(tmp_path, max_iters=12, every_epochs=2,
                     pre_hooks=[FakeScores([0.1, 0.3, 0.2, 0.25])])
    t.train()
    ck = next(h for h in t.hooks if isinstance(h, CheckpointHook))
    # epoch 1: first best, written directly; 2: last + best (a copy); 3: nothing; 4: last.
    assert ck.saved == ["best.pt", "last.pt", "best.pt", "last.pt"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["mAP50"] == pytest.approx(0.3) and best["iter"] == 6
    assert load_checkpoint(tmp_path / "last.pt")["iter"] == 12


def test_partial_last_epoch_is_written_once_with_every_iters(tmp_path):
    # 3 iterations per epoch, 7 in all: the partial third epoch ends the run.
    t = make_trainer(tmp_path, max_iters=7, every_iters=7, every_epochs=5)
    t.train()
    ck = next(h for h in t.hooks if isinstance(h, CheckpointHook))
    assert ck.saved.count("last.pt") == 1
    assert load_checkpoint(tmp_path / "last.pt")["iter"] == 7


def test_resume_keeps_the_score_of_a_newer_best(tmp_path):
    meta = make_meta(model_name="tiny", num_classes=2, class_names=["a", "b"], img_size=8)
    ck = CheckpointHook(tmp_path, meta, every_epochs=2)
    ck.load_state_dict({"best": 0.2})
    assert ck.best == 0.2  # no best.pt yet
    save_checkpoint(tmp_path / "best.pt", {"model": {"w": torch.zeros(2)}, "meta": meta,
                                           "metrics": {"mAP50": 0.9}})
    ck.load_state_dict({"best": 0.2})  # last.pt is older than best.pt
    assert ck.best == 0.9
    ck.load_state_dict({"best": 0.95})
    assert ck.best == 0.95


def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path):
    t = make_trainer(tmp_path, max_iters=40, nan_after=3)
    with pytest.raises(NonFiniteLossError, match="20 consecutive steps had a non-finite loss"):
        t.train()
    # The epoch-1 checkpoint (3 good steps) is kept, never overwritten by the diverged state.
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iter"] == 3
    assert t.storage.nonfinite_total == 20
    for v in t.model.state_dict().values():
        assert torch.isfinite(v).all()


def test_isolated_nonfinite_steps_are_counted_not_fatal(tmp_path):
    class Flaky(TinyDet):
        def forward(self, images, targets):
            out = super().forward(images, targets)
            if self.calls % 2 == 0:
                out["loss"] = out["loss"] * float("inf")
            return out

    t = make_trainer(tmp_path, max_iters=6)
    t.model = Flaky()
    t.optimizer = build_optimizer(t.model, lr=0.01, momentum=0.9, weight_decay=0.0)
    t.scheduler = None
    t.train()
    assert t.storage.nonfinite_total == 3 and t.iter == 6
    assert "non-finite" not in (tmp_path / "results.csv").read_text()


def test_lr_schedule_warmup_and_steps():
    ms = milestones_from_fractions((8 / 12, 11 / 12), 1200)
    assert ms == [800, 1100]
    kw = {"warmup_iters": 500, "warmup_ratio": 0.001, "milestones": ms}
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(250, **kw) == pytest.approx(0.5005)
    assert lr_factor(500, **kw) == 1.0
    assert lr_factor(799, **kw) == 1.0
    assert lr_factor(800, **kw) == pytest.approx(0.1)
    assert lr_factor(1100, **kw) == pytest.approx(0.01)

    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.02, momentum=0.9, weight_decay=1e-4)
    sched = build_scheduler(opt, total_iters=12, lr_steps=(0.5,), warmup_iters=4, warmup_ratio=0.25)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:5] == pytest.approx([0.005, 0.00875, 0.0125, 0.01625, 0.02])
    assert seen[5] == pytest.approx(0.02) and seen[6] == pytest.approx(0.002)


def test_rng_state_roundtrip():
    import random

    import numpy as np

    seed_everything(3)
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_mid_epoch_checkpoint_leaves_the_iteration_counter_alone(tmp_path, monkeypatch):
    # A checkpoint written in after_step says "resume after this iteration" without the hook
    # touching trainer.iter: hooks after it (and the save itself) see the running index.
    import meddet.engine.hooks as hooks_mod

    seen = []
    real_save = hooks_mod.save_checkpoint

    def spy(path, state):
        seen.append((state["iter"], state["trainer"]["iter"], state["epoch"], t.iter))
        return real_save(path, state)

    class After(HookBase):
        def after_step(self):
            seen.append(("after", self.trainer.iter))

    monkeypatch.setattr(hooks_mod, "save_checkpoint", spy)
    t = make_trainer(tmp_path, max_iters=2, every_iters=1, every_epochs=5, hooks=[After()])
    t.train()
    # iteration 0: saved as "1 done" while the counter still reads 0; iteration 1 is the last
    # one, written by the epoch end (counter already 2).
    assert seen == [(1, 1, 0, 0), ("after", 0), ("after", 1), (2, 2, 0, 2)]


def test_hook_state_is_saved_under_the_declared_key(tmp_path):
    class Counter(HookBase):
        state_key = "my-counter"

        def __init__(self):
            self.n = 0

        def after_step(self):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    class Plain(HookBase):
        def state_dict(self):
            return {"x": 1}

    t = make_trainer(tmp_path, max_iters=3, hooks=[Counter(), Plain(), Plain()])
    t.train()
    hooks = load_checkpoint(tmp_path / "last.pt")["trainer"]["hooks"]
    # declared keys, and the class name (numbered when repeated) for hooks that declare none;
    # CheckpointHook keeps the key checkpoints have always had.
    assert hooks["my-counter"] == {"n": 3} and hooks["Plain"] == hooks["Plain#2"] == {"x": 1}
    assert CheckpointHook.state_key == "CheckpointHook" and "CheckpointHook" in hooks
    again = Counter()
    resumed = make_trainer(tmp_path, max_iters=3, hooks=[again])
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    assert again.n == 3


def test_recorded_best_reads_the_checkpoint_hook_state_then_the_metrics_row():
    from meddet.engine.hooks import recorded_best

    state = {"trainer": {"hooks": {"CheckpointHook": {"best": 0.7, "metric": "mAP50"}}},
             "metrics": {"mAP50": 0.5, "mAP": 0.2}}
    assert recorded_best(state) == 0.7
    assert recorded_best(state, "mAP") == 0.2  # the hook tracked mAP50, not mAP
    assert recorded_best({"metrics": {"mAP50": 0.5}}) == 0.5
    never = {"trainer": {"hooks": {"CheckpointHook": {"best": None}}}, "metrics": {}}
    assert recorded_best(never) is None
    assert recorded_best({"metrics": {"mAP50": float("nan")}}) is None
    assert recorded_best({"metrics": {"mAP50": "n/a"}}) is None
    assert recorded_best({}) is None


class DtypeProbe(TinyDet):
    """TinyDet that records the dtype its convolution computes in, and its losses."""

    losses: list[float]

    def forward(self, images, targets):
        self.conv_dtype = self.conv(images).dtype
        out = super().forward(images, targets)
        self.losses = [*getattr(self, "losses", []), float(out["loss"].detach())]
        return out


def _probe_trainer(cpu_amp: bool) -> Trainer:
    seed_everything(0)
    ds = TinyData()
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate,
                                         sampler=du.ResumableSampler(len(ds), shuffle=False))
    model = DtypeProbe()
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    return Trainer(model, opt, loader, iters_per_epoch=3, max_iters=3, cpu_amp=cpu_amp)


def test_cpu_amp_runs_the_forward_in_bfloat16_and_keeps_float32_weights():
    ref, amp = _probe_trainer(False), _probe_trainer(True)
    w0 = ref.model.conv.weight.detach().clone()
    assert torch.equal(w0, amp.model.conv.weight)  # same seed, same start
    ref.train()
    amp.train()
    assert ref.model.conv_dtype == torch.float32 and amp.model.conv_dtype == torch.bfloat16
    for p in amp.model.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    assert not torch.equal(amp.model.conv.weight, w0)  # it trained
    # The same three steps in float32 and under bfloat16 autocast (8 significant bits) give
    # nearby losses, not identical ones.
    la, lb = ref.model.losses, amp.model.losses
    assert len(la) == len(lb) == 3 and la != lb and la == pytest.approx(lb, rel=0.05)
