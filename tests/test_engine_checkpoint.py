"""Checkpoints: atomic, weights-only, and one clear error per kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddet.engine.checkpoint import (
    build_model_from_checkpoint,
    capture_rng_state,
    load_checkpoint,
    make_meta,
    save_checkpoint,
)
from meddet.errors import MedDetError


def meta(**kw):
    base = {"model_name": "gfl_mbv2", "num_classes": 2, "img_size": 64,
            "class_names": ["protrusion", "non-protrusion"], "model_overrides": {"score_thr": 0.05}}
    base.update(kw)
    return make_meta(**base)


def test_roundtrip_rebuilds_the_model(tmp_path):
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector("gfl_mbv2", num_classes=2, score_thr=0.05)
    path = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "meta": meta(),
                                               "rng": capture_rng_state(), "epoch": 1})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    ckpt = load_checkpoint(path)
    assert ckpt["meta"]["format"] == "meddet-checkpoint" and ckpt["epoch"] == 1
    rebuilt, m = build_model_from_checkpoint(path)
    assert not rebuilt.training and m["class_names"] == ["protrusion", "non-protrusion"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    # The RNG block survives weights-only loading (no numpy arrays in it).
    assert isinstance(ckpt["rng"]["numpy"]["keys"], list)


def test_missing_and_directory(tmp_path):
    with pytest.raises(MedDetError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(MedDetError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_not_a_meddet_checkpoint(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, p)
    with pytest.raises(MedDetError, match="not a meddet checkpoint"):
        load_checkpoint(p)


def test_truncated_and_garbage(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.zeros(1000)}, "meta": meta()})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedDetError, match="corrupted or truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(MedDetError, match="corrupted or truncated"):
        load_checkpoint(tmp_path / "junk.pt")


class Evil:
    def __reduce__(self):
        return (print, ("executed!",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": meta(), "payload": Evil()}, p)
    with pytest.raises(MedDetError, match="refused: loading it would execute arbitrary code"):
        load_checkpoint(p)
    assert "executed!" not in capsys.readouterr().out
    p2 = tmp_path / "np.pt"
    torch.save({"model": {}, "meta": meta(), "x": np.zeros(3)}, p2)
    with pytest.raises(MedDetError, match="refused"):
        load_checkpoint(p2)


def test_weights_that_do_not_fit(tmp_path):
    from meddet.models import build_detector

    sd = build_detector("gfl_mbv2", num_classes=2).state_dict()
    sd.pop(next(iter(sd)))
    sd["extra.weight"] = torch.zeros(1)
    p = save_checkpoint(tmp_path / "bad.pt", {"model": sd, "meta": meta()})
    with pytest.raises(MedDetError, match="does not fit the model: 1 missing .*1 unexpected"):
        build_model_from_checkpoint(p)
    p = save_checkpoint(tmp_path / "unk.pt", {"model": {}, "meta": meta(model_name="gfl_nope")})
    with pytest.raises(MedDetError, match="not in this meddet's zoo"):
        build_model_from_checkpoint(p)


def test_skip_weight_init_is_scoped_and_the_rebuilt_model_is_exact(tmp_path):
    from meddet.models import build_detector, skip_weight_init

    before = {n: getattr(torch.nn.init, n) for n in ("normal_", "kaiming_uniform_", "constant_")}
    with pytest.raises(RuntimeError), skip_weight_init():
        w = torch.full((3,), 7.0)
        assert torch.nn.init.normal_(w) is w and torch.equal(w, torch.full((3,), 7.0))
        raise RuntimeError("body fails")
    # Restored, also after an exception: initialisers work again.
    assert all(getattr(torch.nn.init, n) is f for n, f in before.items())
    assert not torch.equal(torch.nn.init.normal_(torch.full((64,), 7.0)), torch.full((64,), 7.0))

    # A student with nmODE² in the head, rebuilt without initialisation, predicts exactly
    # what the saved model predicts.
    torch.manual_seed(0)
    model = build_detector("meddet").eval()
    p = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(),
                                            "meta": meta(model_name="meddet")})
    rebuilt, _ = build_model_from_checkpoint(p)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.forward_raw(x), rebuilt.forward_raw(x)):
            for ta, tb in zip(a, b):
                assert torch.equal(ta, tb)
