"""The weight EMA: its arithmetic, when it updates, what checkpoints hold, exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from meddet.config import load_config
from meddet.engine import distributed as du
from meddet.engine.checkpoint import load_checkpoint, make_meta, seed_everything
from meddet.engine.ema import ModelEMA
from meddet.engine.hooks import CheckpointHook, LRSchedulerHook
from meddet.engine.schedule import build_optimizer, build_scheduler
from meddet.engine.trainer import HookBase, Trainer
from meddet.errors import MedDetError

# --------------------------------------------------------------------------- the arithmetic


class Scalar(nn.Module):
    """One scalar weight and a BatchNorm (float running stats, integer batch counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.bn = nn.BatchNorm1d(1).double()

    def set(self, value: float, batches: int) -> None:
        with torch.no_grad():
            self.w.fill_(value)
            self.bn.running_mean.fill_(value)
            self.bn.num_batches_tracked.fill_(batches)


def test_update_follows_the_warmed_up_decay_by_hand():
    model = Scalar()
    ema = ModelEMA(model, decay=0.5, warmup=2)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    # d_t = 0.5 * (1 - exp(-t / 2)):  d_1 = 0.19673467, d_2 = 0.31606028, d_3 = 0.38843492.
    # e_1 = 0.80326533 * 1                    = 0.80326533
    # e_2 = 0.31606028 * e_1 + 0.68393972 * 2 = 1.62175971
    # e_3 = 0.38843492 * e_2 + 0.61156508 * 4 = 3.07620842
    expected = [(0.19673467014368330, 0.8032653298563167), (0.31606027941427883, 1.6217597057696327),
                (0.38843491992578510, 3.0762084217463520)]
    for t, (value, (d, e)) in enumerate(zip((1.0, 2.0, 4.0), expected), start=1):
        model.set(value, batches=10 * t)
        ema.update(model)
        assert ema.updates == t
        assert ema.decay_at(t) == pytest.approx(d, abs=1e-15)
        assert float(ema.module.w) == pytest.approx(e, abs=1e-12)
        # Float buffers are averaged like the weights; integer ones are copied.
        assert float(ema.module.bn.running_mean) == pytest.approx(e, abs=1e-12)
        assert int(ema.module.bn.num_batches_tracked) == 10 * t
    # The source model is left alone.
    assert float(model.w.detach()) == 4.0


def test_no_warmup_uses_the_decay_from_the_first_update():
    model = Scalar()
    model.set(2.0, batches=0)
    ema = ModelEMA(model, decay=0.75, warmup=0)
    model.set(6.0, batches=1)
    ema.update(model)
    assert ema.decay_at(1) == 0.75
    assert float(ema.module.w) == pytest.approx(0.75 * 2 + 0.25 * 6, abs=1e-12)


def test_state_dict_round_trip_and_bad_arguments():
    model = Scalar()
    ema = ModelEMA(model, decay=0.5, warmup=2)
    model.set(3.0, batches=1)
    ema.update(model)
    state = ema.state_dict()
    other = ModelEMA(Scalar(), decay=0.5, warmup=2)
    other.load_state_dict(state)
    assert other.updates == 1 and float(other.module.w) == float(ema.module.w) != 0.0
    with pytest.raises(MedDetError, match="EMA weights does not fit"):
        other.load_state_dict({"module": nn.Linear(1, 1).state_dict(), "updates": 1})
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay"):
            ModelEMA(model, decay=decay)
    with pytest.raises(ValueError, match="warm-up"):
        ModelEMA(model, warmup=-1)


def test_config_keys_are_validated():
    tc = load_config(None, {}).train
    assert (tc.ema, tc.ema_decay, tc.ema_warmup) == (False, 0.999, 100)
    for bad in ({"ema_decay": 1.0}, {"ema_decay": 0.0}, {"ema_warmup": -1}):
        with pytest.raises(MedDetError, match=next(iter(bad))):
            load_config(None, {"train": bad})


# --------------------------------------------------------------------------- in the trainer


class TinyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 8, 8, generator=g), {"labels": torch.tensor([i % 2])}


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class TinyDet(nn.Module):
    """``model(images, targets) -> {"loss"}``; a BatchNorm and Dropout (uses the torch RNG).

    ``bad_calls``: the forward calls (1-based) whose loss is NaN.
    """

    def __init__(self, bad_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        x = self.drop(self.bn(self.conv(images)).mean((2, 3)))
        labels = torch.cat([t["labels"] for t in targets])
        loss = nn.functional.cross_entropy(self.fc(x), labels)
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        return {"loss": loss}


def make_trainer(run_dir, *, max_iters=6, ema=True, every_iters=None, bad_calls=(), hooks=()):
    seed_everything(0)
    model = TinyDet(bad_calls)
    ds = TinyData()
    sampler = du.ResumableSampler(len(ds), shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate,
                                         generator=torch.Generator())
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = build_scheduler(opt, total_iters=6, lr_steps=(0.5,), warmup_iters=2,
                            warmup_ratio=0.1)
    meta = make_meta(model_name="tiny", num_classes=2, class_names=["a", "b"], img_size=8)
    all_hooks = [LRSchedulerHook(), *hooks,
                 CheckpointHook(run_dir, meta, every_iters=every_iters)]
    return Trainer(model, opt, loader, iters_per_epoch=3, max_iters=max_iters, scheduler=sched,
                   hooks=all_hooks, grad_clip=35.0,
                   ema=ModelEMA(model, decay=0.6, warmup=1) if ema else None)


class RecordWeights(HookBase):
    """The trained weights after every iteration."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def after_step(self) -> None:
        self.after.append({k: v.clone() for k, v in self.trainer.model.state_dict().items()})


def expected_ema(initial, states, decay_at):
    """The EMA recomputed from the weights after each real step (an independent reference)."""
    out = {k: v.clone().double() for k, v in initial.items()}
    for t, state in enumerate(states, start=1):
        d = decay_at(t)
        for k, v in state.items():
            out[k] = d * out[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    return out


def assert_state_close(actual, expected, *, atol=1e-6):
    assert actual.keys() == expected.keys()
    for k in expected:
        if expected[k].is_floating_point():
            torch.testing.assert_close(actual[k].double(), expected[k].double(), atol=atol,
                                       rtol=0, msg=k)
        else:
            assert torch.equal(actual[k], expected[k]), k


def test_the_ema_skips_non_finite_steps(tmp_path):
    record = RecordWeights()
    t = make_trainer(tmp_path, max_iters=4, bad_calls=(2,), hooks=[record])
    initial = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train()
    assert t.storage.nonfinite_total == 1 and t.ema.updates == 3
    # Iteration 1 was skipped: the average saw the weights after iterations 0, 2 and 3.
    real = [record.after[i] for i in (0, 2, 3)]
    assert_state_close(t.ema.module.state_dict(), expected_ema(initial, real, t.ema.decay_at))
    assert not torch.allclose(t.ema.module.fc.weight, t.model.fc.weight)


class FakeScaler:
    """A float16 grad scaler's contract: ``step`` skips, and ``update`` halves the scale,
    when the gradients were not finite (here: on the listed calls)."""

    def __init__(self, inf_calls: tuple[int, ...]) -> None:
        self.inf_calls, self.calls, self.scale_value = inf_calls, 0, 1024.0

    def scale(self, loss):
        return loss

    def get_scale(self) -> float:
        return self.scale_value

    def step(self, opt) -> None:
        self.calls += 1
        if self.calls not in self.inf_calls:
            opt.step()

    def update(self) -> None:
        if self.calls in self.inf_calls:
            self.scale_value /= 2

    def state_dict(self) -> dict:
        return {}


def test_the_ema_skips_steps_the_grad_scaler_skipped(tmp_path):
    t = make_trainer(tmp_path, max_iters=3)
    t.grad_clip = None
    t.scaler = FakeScaler(inf_calls=(2,))
    t.train()
    assert t.storage.nonfinite_total == 0 and t.ema.updates == 2


def test_resume_restores_the_average_and_the_trained_weights(tmp_path):
    straight = make_trainer(tmp_path / "a", max_iters=6)
    straight.train()

    first = make_trainer(tmp_path / "b", max_iters=4, every_iters=1)
    first.train()
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["iter"] == 4 and ckpt["ema"] == {"updates": 4}
    assert_state_close(ckpt["model"], first.ema.module.state_dict(), atol=0)
    assert_state_close(ckpt["train_model"], first.model.state_dict(), atol=0)
    torch.manual_seed(1234)  # a resumed process starts with unrelated RNG states
    second = make_trainer(tmp_path / "b", max_iters=6)
    second.load_state_dict(ckpt)
    assert second.ema.updates == 4
    second.train()

    assert second.ema.updates == straight.ema.updates == 6
    assert_state_close(second.model.state_dict(), straight.model.state_dict(), atol=1e-7)
    assert_state_close(second.ema.module.state_dict(), straight.ema.module.state_dict(),
                       atol=1e-7)


def test_resuming_across_ema_on_and_off(tmp_path):
    with_ema = make_trainer(tmp_path / "a", max_iters=3)
    with_ema.train()
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    # Switched off: the run continues the trained weights, not the average.
    plain = make_trainer(tmp_path / "b", max_iters=6, ema=False)
    plain.load_state_dict(ckpt)
    assert_state_close(plain.model.state_dict(), with_ema.model.state_dict(), atol=0)

    plain.train()
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert "train_model" not in ckpt and "ema" not in ckpt
    # Switched on: the average starts at the resumed weights, warm-up included.
    resumed = make_trainer(tmp_path / "c", max_iters=6)
    resumed.load_state_dict(ckpt)
    assert resumed.ema.updates == 0
    assert_state_close(resumed.ema.module.state_dict(), plain.model.state_dict(), atol=0)


def test_the_ema_does_not_change_the_training_itself(tmp_path):
    a = make_trainer(tmp_path / "a", max_iters=5, ema=False)
    a.train()
    b = make_trainer(tmp_path / "b", max_iters=5)
    b.train()
    assert_state_close(b.model.state_dict(), a.model.state_dict(), atol=0)
    ka, kb = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert set(kb) - set(ka) == {"train_model", "ema"} and set(ka) <= set(kb)
    assert_state_close(ka["model"], kb["train_model"], atol=0)


# --------------------------------------------------------------------------- assembled runs


def _cfg(root, distill=None, **train):
    return load_config(None, {
        "data": {"root": str(root), "img_size": 64, "augment": False, "workers": 0},
        "model": {"name": "gfl_mbv2"},
        "train": {"batch_size": 2, "epochs": 1, "max_iters": 2, "device": "cpu",
                  "warmup_iters": 0, "lr": 0.02, "base_batch_size": 2, **train},
        "distill": distill or {}})


@pytest.fixture(scope="module")
def assembled_runs(tiny_dataset, tmp_path_factory):
    """Two 2-iteration gfl_mbv2 runs, without and with a (fast, visible) EMA, and which model
    their validation evaluated."""
    import meddet.engine.defaults as defaults

    out = {}
    evaluated: list[nn.Module] = []
    real = defaults.evaluate_model

    def spy(model, *args, **kwargs):
        evaluated.append(model)
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(defaults, "evaluate_model", spy)
        for name, train in (("plain", {}), ("ema", {"ema": True, "ema_decay": 0.5,
                                                   "ema_warmup": 0})):
            cfg = _cfg(tiny_dataset, **train)
            run_dir = tmp_path_factory.mktemp(name)
            run = defaults.assemble_trainer(cfg, run_dir, model_name="gfl_mbv2",
                                            datasets=defaults.build_datasets(cfg),
                                            device=torch.device("cpu"))
            evaluated.clear()
            run.trainer.train()
            out[name] = (run, run_dir, list(evaluated))
    return out


def test_ema_off_keeps_the_checkpoint_format(assembled_runs):
    run, run_dir, evaluated = assembled_runs["plain"]
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert set(ckpt) == {"model", "optimizer", "scheduler", "epoch", "iter", "rng", "trainer",
                         "metrics", "meta"}
    assert "ema" not in ckpt["meta"] and "ema" not in run.header.lower()
    assert evaluated == [run.trainer.model]
    assert_state_close(ckpt["model"], run.trainer.model.state_dict(), atol=0)


def test_an_ema_run_evaluates_and_ships_the_average(assembled_runs):
    from meddet.engine.checkpoint import build_model_from_checkpoint

    plain = assembled_runs["plain"][0].trainer
    run, run_dir, evaluated = assembled_runs["ema"]
    t = run.trainer
    assert evaluated == [t.ema.module] and t.eval_model is t.ema.module
    assert t.ema.updates == 2 and "weight EMA (decay 0.5, warm-up 0)" in run.header
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run_dir / name)
        assert ckpt["meta"]["ema"] is True
        assert_state_close(ckpt["model"], t.ema.module.state_dict(), atol=0)
        assert_state_close(ckpt["train_model"], t.model.state_dict(), atol=0)
    # The EMA does not disturb the training: same trained weights as without it.
    assert_state_close(t.model.state_dict(), plain.model.state_dict(), atol=0)

    # What `meddet eval` / predict / export load is the average, which predicts differently
    # from the trained weights.
    loaded, meta = build_model_from_checkpoint(run_dir / "best.pt")
    assert meta["ema"] is True
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded.forward_raw(x)[1]
        avg = t.ema.module.forward_raw(x)[1]
        raw = t.model.eval().forward_raw(x)[1]
    for g, a, r in zip(got, avg, raw):
        torch.testing.assert_close(g, a, atol=0, rtol=0)
        assert not torch.allclose(g, r, atol=1e-4)


def test_distillation_averages_the_student(tiny_dataset, tiny_teachers, tmp_path):
    from meddet.distill.trainer import build_distill_trainer, write_student_checkpoint

    cfg = _cfg(tiny_dataset, {"method": "mgd", "student": "gfl_mbv2"}, ema=True,
               ema_decay=0.5, ema_warmup=0)
    run = build_distill_trainer(cfg, tmp_path, teachers=[str(p) for p in tiny_teachers])
    t = run.trainer
    initial = {k: v.clone() for k, v in t.model.state_dict().items()}
    record = RecordWeights()
    t.register_hooks([record])
    t.train()
    assert t.ema.updates == 2
    assert_state_close(t.ema.module.state_dict(),
                       expected_ema(initial, record.after, t.ema.decay_at), atol=1e-5)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["meta"]["ema"] is True and "distill" in ckpt["extra"]
    assert_state_close(ckpt["model"], t.ema.module.state_dict(), atol=0)
    student = load_checkpoint(write_student_checkpoint(tmp_path))
    assert_state_close(student["model"], t.ema.module.state_dict(), atol=0)
    assert "train_model" not in student
