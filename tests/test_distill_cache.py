"""The teacher cache: fixed augmentation variants, exact reuse of the teachers' outputs, and a
distillation run whose losses equal the uncached run's."""

from __future__ import annotations

import math

import pytest
import torch

from meddet.config import AugmentConfig, load_config
from meddet.data import CocoDetection
from meddet.distill.cache import TeacherCache, cache_keys
from meddet.engine.checkpoint import load_checkpoint
from meddet.engine.hooks import EvalHook
from meddet.engine.trainer import HookBase
from meddet.errors import MedDetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Scale jitter and photometric jitter off, flips on: two variants of an image differ at most
# by a mirror.
FLIP_ONLY = AugmentConfig(hflip=0.5, scale_jitter=(1.0, 1.0), brightness=0.0, contrast=0.0,
                          gamma=0.0)


def _draws(ds, index, n):
    torch.manual_seed(0)
    return [ds[index] for _ in range(n)]


def test_variants_are_fixed_tensors_and_keyed(tiny_dataset):
    ds = CocoDetection(tiny_dataset, "train", img_size=64, train=True, aug_variants=2)
    samples = _draws(ds, 0, 12)
    by_variant: dict[int, torch.Tensor] = {}
    for img, tgt in samples:
        v = tgt["aug_variant"]
        assert v in (0, 1)
        if v in by_variant:  # the same variant is the same tensor, every time
            assert torch.equal(by_variant[v], img)
        by_variant[v] = img
    assert set(by_variant) == {0, 1}
    # the variants are real augmentation draws (default config: flip, jitter, scale)
    assert not torch.equal(by_variant[0], by_variant[1])
    # without the pool, twelve draws give twelve different tensors and no key
    free = CocoDetection(tiny_dataset, "train", img_size=64, train=True)
    imgs = [img for img, t in _draws(free, 0, 12) if "aug_variant" not in t]
    assert len(imgs) == 12 and len({img.sum().item() for img in imgs}) == 12
    # no augmentation: one variant, key 0
    plain = CocoDetection(tiny_dataset, "train", img_size=64, aug_variants=3)
    assert {t["aug_variant"] for _, t in _draws(plain, 1, 4)} == {0}
    with pytest.raises(MedDetError, match="aug_variants must be a positive integer"):
        CocoDetection(tiny_dataset, "train", img_size=64, aug_variants=0)


def _fake_teachers(calls):
    """Two 'teachers' whose per-image outputs are known: sums and maxima of the image."""

    def compute(x):
        calls.append(x.clone())
        feats = [x * 2.0, x[:, :1, ::2, ::2] + 1.0]
        return [(feats, [x.amax(1, keepdim=True)]), ([x - 1.0], [x[:, 1:2]])]

    return compute


def test_lookup_computes_only_missing_images_and_stitches_in_order():
    torch.manual_seed(0)
    pool = {k: torch.randn(3, 8, 8) for k in [(1, 0), (1, 1), (2, 0), (3, 0)]}
    calls: list[torch.Tensor] = []
    compute = _fake_teachers(calls)
    cache = TeacherCache(wanted=("feats", "bbox_preds"), max_bytes=2**30)

    def batch(keys):
        images = torch.stack([pool[k] for k in keys])
        got = cache.lookup(images, keys, compute)
        # the reference: every teacher on the whole batch
        ref = compute(images)
        calls.pop()
        for p, (feats, bbox) in zip(got, ref):
            assert [f.shape for f in p.feats] == [f.shape for f in feats]
            assert all(torch.equal(a, b) for a, b in zip(p.feats, feats))
            assert all(torch.equal(a, b) for a, b in zip(p.bbox_preds, bbox))
        return got

    batch([(1, 0), (2, 0)])
    assert len(calls) == 1 and calls[0].shape[0] == 2  # first time: the batch as is
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 2)
    batch([(3, 0), (1, 0), (1, 1)])
    # one pass on the two new images, in batch order
    assert len(calls) == 2 and torch.equal(calls[1], torch.stack([pool[(3, 0)], pool[(1, 1)]]))
    assert (cache.hits, cache.misses, len(cache)) == (1, 4, 4)
    batch([(1, 1), (3, 0)])
    assert len(calls) == 2  # all found: the teachers do not run
    assert cache.stats()["hit_rate"] == pytest.approx(3 / 7)
    # an entry has no batch dimension and owns its memory (not a view of a batch output)
    entry = cache.entry((3, 0))
    assert entry[0].feats[0].shape == (3, 8, 8) and entry[0].feats[0]._base is None
    # per image: 3*8*8 + 1*4*4 + 1*8*8 (teacher 0) + 3*8*8 + 1*8*8 (teacher 1) floats
    assert cache.stats()["megabytes_per_entry"] * 2**20 == 4 * (192 + 16 + 64 + 192 + 64)


def test_budget_and_outputs_the_method_does_not_read():
    pool = torch.randn(4, 3, 8, 8)
    calls: list[torch.Tensor] = []
    per_image = 4 * (192 + 16 + 192)  # feats of both teachers only
    cache = TeacherCache(wanted=("feats",), max_bytes=2 * per_image + 1)
    keys = [(i, 0) for i in range(4)]
    out = cache.lookup(pool, keys, _fake_teachers(calls))
    assert all(p.bbox_preds == [] for p in out)
    assert (len(cache), cache.not_stored, cache.nbytes) == (2, 2, 2 * per_image)
    cache.lookup(pool, keys, _fake_teachers(calls))
    # the two that did not fit are computed again, alone
    assert torch.equal(calls[-1], pool[2:])
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_keys_need_the_variant():
    assert cache_keys([{"image_id": 7, "aug_variant": 1}]) == [(7, 1)]
    with pytest.raises(RuntimeError, match="aug_variants"):
        cache_keys([{"image_id": 7}])


def test_a_flipped_variant_has_its_own_entry(tiny_dataset, tiny_teachers):
    from meddet.engine.checkpoint import build_model_from_checkpoint

    teacher, _ = build_model_from_checkpoint(load_checkpoint(tiny_teachers[0]), "cpu")
    teacher.eval().requires_grad_(False)

    def compute(x):
        with torch.inference_mode():
            feats, _, bbox = teacher.forward_raw(x)
        return [(feats, bbox)]

    ds = CocoDetection(tiny_dataset, "train", img_size=64, train=True, augment=FLIP_ONLY,
                       aug_variants=4)
    torch.manual_seed(0)
    views: dict[int, torch.Tensor] = {}
    for _ in range(40):
        img, tgt = ds[0]
        views[tgt["aug_variant"]] = img
    flipped = [v for v in views if not torch.equal(views[v], views[0])]
    assert flipped, "no variant of image 0 is mirrored"
    f = flipped[0]
    assert torch.equal(views[f], views[0].flip(-1))  # the only difference is the mirror
    cache = TeacherCache(wanted=("feats", "bbox_preds"), max_bytes=2**30)
    iid = ds.ids[0]
    cache.lookup(torch.stack([views[0], views[f]]), [(iid, 0), (iid, f)], compute)
    plain, mirrored = cache.entry((iid, 0))[0], cache.entry((iid, f))[0]
    assert not torch.allclose(plain.feats[0], mirrored.feats[0], atol=1e-3)
    assert not torch.allclose(plain.bbox_preds[0], mirrored.bbox_preds[0], atol=1e-3)
    # and each entry is what the teacher computes on that variant alone (up to the last bits:
    # a convolution on a batch of one takes another CPU kernel than on a batch of two)
    for key, view in ((0, views[0]), (f, views[f])):
        (feats, bbox), = compute(view[None])
        got = cache.entry((iid, key))[0]
        for a, b in zip([*got.feats, *got.bbox_preds], [*feats, *bbox]):
            assert torch.allclose(a, b[0], rtol=1e-5, atol=1e-5)


class _Losses(HookBase):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def after_step(self) -> None:
        self.steps.append({k: v for k, v in self.trainer.storage.latest.items()
                           if k.startswith(("loss", "teacher_cache"))})


def _run(dataset, teachers, method, *, cached: bool):
    """Six steps (3 epochs of 2 batches) with augmentation from 2 fixed variants per image.

    Small learning rates keep the last-bit differences of a teacher pass on fewer images from
    growing through the training: at 64 px MedDet standardises 1x1 pyramid levels over two
    values per channel, where they move the gradient visibly (at lr 0.02 the two runs part by
    2 % in loss_det within two steps).
    """
    from meddet.distill.trainer import build_distill_trainer

    cfg = load_config(None, {
        "data": {"root": str(dataset), "img_size": 64, "workers": 0},
        "train": {"batch_size": 2, "epochs": 3, "device": "cpu", "warmup_iters": 0,
                  "lr": 1e-5, "base_batch_size": 2, "seed": 5},
        "distill": {"method": method, "student": "gfl_mbv2", "teacher_cache": True,
                    "teacher_cache_variants": 2, "disc_lr": 1e-8}})
    run = build_distill_trainer(cfg, None, teachers=[str(p) for p in teachers])
    assert run.trainer.data_loader.dataset.aug_variants == 2
    if not cached:
        # the same restricted augmentation; the teachers run on every batch
        run.step.cache = None
    seen: list[list] = []  # per step, what the method got from the teachers
    losses = run.method.losses

    def recording(student, passes):
        seen.append([[t.detach().clone() for t in (*p.feats, *p.bbox_preds)] for p in passes])
        return losses(student, passes)

    run.method.losses = recording
    trainer = run.trainer
    trainer.hooks = [h for h in trainer.hooks if not isinstance(h, EvalHook)]
    rec = _Losses()
    trainer.register_hooks([rec])
    trainer.train()
    return run, rec.steps, seen


@pytest.mark.parametrize("method", ["meddet", "ld"])
def test_cached_run_has_the_uncached_losses(method, tiny_dataset, tiny_teachers):
    cached_run, cached, cached_out = _run(tiny_dataset, tiny_teachers, method, cached=True)
    _, plain, plain_out = _run(tiny_dataset, tiny_teachers, method, cached=False)
    assert len(cached) == len(plain) == 6  # 3 epochs of 2 batches
    hits = [s.pop("teacher_cache_hit") for s in cached]
    # epoch 1 fills the cache; later batches are served from it wholly or in part (a batch
    # with one image found runs the teachers on the other alone)
    assert hits[:2] == [0.0, 0.0] and 0.5 in hits[2:] and 1.0 in hits[2:]
    stats = cached_run.step.cache.stats()
    assert stats["hits"] == 2 * sum(hits) and stats["hits"] + stats["misses"] == 12
    assert stats["entries"] == stats["misses"] <= 8  # 4 images x 2 variants
    # The teachers' outputs at every step: the uncached ones, up to a teacher pass on fewer
    # images (another convolution kernel, last-bit differences).
    for step, (a, b) in enumerate(zip(cached_out, plain_out)):
        assert len(a) == len(b) == (3 if method == "meddet" else 1)
        for ta, tb in zip(a, b):
            assert [t.shape for t in ta] == [t.shape for t in tb]
            for x, y in zip(ta, tb):
                assert torch.allclose(x, y, rtol=1e-5, atol=1e-5), step
                if hits[step] in (0.0, 1.0):  # all found or the whole batch computed: exact
                    assert torch.equal(x, y), step
    term = "loss_ld" if method == "ld" else "loss_dist"
    for step, (c, p) in enumerate(zip(cached, plain)):
        assert c.keys() == p.keys() and term in c
        for k in c:
            if step < 2:  # epoch 1: every batch computed whole, as without the cache
                assert c[k] == p[k], (step, k)
            assert math.isclose(c[k], p[k], rel_tol=1e-4, abs_tol=1e-6), (step, k, c[k], p[k])


def _rows(run_dir):
    import csv

    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cli_flag_and_resume_rebuild_the_cache(tiny_dataset, tiny_teachers, tmp_path, capsys):
    import json

    from meddet.cli import main

    base = ["distill", "--teachers", ",".join(str(p) for p in tiny_teachers), "--data",
            str(tiny_dataset), "--method", "ld", "--student", "gfl_mbv2", "--img-size", "64",
            "--batch-size", "2", "--config", "cpu-small", "--device", "cpu", "--teacher-cache",
            "--teacher-cache-variants", "1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*base, "--max-iters", "4", "--out", str(whole), "--json",
                 str(tmp_path / "whole.json")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "teacher cache: 4 image variants" in out and "50% of the images served" in out
    stats = json.loads((tmp_path / "whole.json").read_text())["teacher_cache"]
    # one variant per image: epoch 1 computes the 4 images, epoch 2 finds them all
    assert (stats["entries"], stats["hits"], stats["misses"], stats["not_stored"]) == (4, 4, 4, 0)
    # LD keeps the box distributions: 68 channels on 8x8 + 4x4 + 2x2 + 1 + 1 positions, fp32
    assert stats["megabytes_per_entry"] * 2**20 == 68 * 86 * 4
    assert main([*base, "--max-iters", "2", "--out", str(part)]) == 0
    ckpt = load_checkpoint(part / "last.pt")
    assert ckpt["meta"]["config"]["distill"]["teacher_cache"] is True
    assert not any("cache" in k for k in ckpt["extra"])  # never saved
    assert main(["distill", "--resume", str(part), "--max-iters", "4", "--json",
                 str(tmp_path / "part.json")]) == 0, capsys.readouterr().err
    stats = json.loads((tmp_path / "part.json").read_text())["teacher_cache"]
    assert (stats["entries"], stats["hits"], stats["misses"]) == (4, 0, 4)  # rebuilt
    a, b = _rows(whole), _rows(part)
    assert len(a) == len(b) == 2
    for k in ("loss_det", "loss_ld", "loss"):
        for ra, rb in zip(a, b):
            assert math.isclose(float(ra[k]), float(rb[k]), rel_tol=1e-5), k
