"""Config loading: built-ins, overrides, unknown keys and wrong types."""

import pytest

from meddet.config import builtin_configs, config_to_yaml, load_config
from meddet.errors import MedDetError


def test_builtins_load():
    names = builtin_configs()
    assert {"default", "paper", "cpu-small", "cpu-crop"} <= set(names)
    for name in names:
        load_config(name)
    paper = load_config("paper")
    assert paper.data.img_size == 512 and paper.train.batch_size == 16
    assert paper.train.lr == pytest.approx(0.01) and paper.train.warmup_iters == 500
    crop = load_config("cpu-crop")  # the calibrated CPU recipe (docs/training.md)
    assert crop.data.img_size == 256 and crop.data.augmentation.crop == 128
    assert not crop.train.ema and crop.train.epochs == 80 and crop.train.optimizer == "adamw"
    assert crop.train.lr == pytest.approx(2e-3) and crop.train.batch_size == 8


def test_overrides_win_and_none_is_ignored():
    cfg = load_config("cpu-small", {"train": {"epochs": 3, "lr": None}, "data": {"img_size": 128}})
    assert cfg.train.epochs == 3 and cfg.data.img_size == 128
    assert cfg.train.lr == load_config("cpu-small").train.lr


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(MedDetError, match=r"unknown key 'train.epoch' in .*bad.yaml"):
        load_config(str(p))


def test_wrong_type_and_invalid_values(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(MedDetError, match="train.epochs"):
        load_config(str(p))
    with pytest.raises(MedDetError, match="multiple of 32"):
        load_config(None, {"data": {"img_size": 100}})
    with pytest.raises(MedDetError, match="sigma"):
        load_config(None, {"distill": {"sigma": 0.8, "tau": 0.5}})


def test_missing_config_is_clear():
    with pytest.raises(MedDetError, match="unknown config"):
        load_config("no-such-config")
    with pytest.raises(MedDetError, match="does not exist"):
        load_config("missing.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("paper")
    p = tmp_path / "c.yaml"
    p.write_text(config_to_yaml(cfg))
    assert load_config(str(p)) == cfg
