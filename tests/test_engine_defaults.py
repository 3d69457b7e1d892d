"""Config to trainer: the one assembly function, and the lists it derives instead of copying."""

from __future__ import annotations

import pytest
import torch

from meddet.config import NMODE_PLACEMENTS, ModelConfig, load_config
from meddet.engine.defaults import (
    MODEL_OVERRIDE_FIELDS,
    TrainerExtension,
    assemble_trainer,
    build_datasets,
    model_overrides,
)
from meddet.engine.hooks import CheckpointHook
from meddet.errors import MedDetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_model_override_fields_are_the_config_fields_the_zoo_accepts():
    from meddet.models.zoo import OVERRIDES

    assert set(MODEL_OVERRIDE_FIELDS) == {"nmode", "pretrained", "score_thr", "nms_iou",
                                          "max_per_img", "min_box_size", "lambda_qfl", "mu_dfl",
                                          "nmode_form", "reg_prior", "box_loss_norm", "fpn_norm",
                                          "atss_topk", "zero_init_residual",
                                          "residual_init", "qfl_beta"}
    assert set(MODEL_OVERRIDE_FIELDS) <= set(OVERRIDES)
    assert set(MODEL_OVERRIDE_FIELDS) | {"name"} == set(ModelConfig.model_fields)
    cfg = load_config(None, {"model": {"nmode": "fpn", "score_thr": 0.2}})
    got = model_overrides(cfg)
    assert got["nmode"] == "fpn" and got["score_thr"] == 0.2 and "pretrained" not in got


def test_nmode_placements_are_one_list():
    import inspect

    from meddet.cli.distill import distill
    from meddet.cli.train import pretrain_teacher
    from meddet.models import detector

    assert detector.NMODE_PLACEMENTS is NMODE_PLACEMENTS
    assert NMODE_PLACEMENTS == ("head", "fpn", "backbone", "none")
    with pytest.raises(MedDetError, match="model.nmode"):
        load_config(None, {"model": {"nmode": "neck"}})
    for command in (pretrain_teacher, distill):
        option = inspect.signature(command).parameters["nmode"].default
        assert "head | fpn | backbone | none" in option.help, command


def test_train_and_distill_share_their_common_options():
    import inspect

    from meddet.cli.distill import distill
    from meddet.cli.train import pretrain_teacher

    a = inspect.signature(pretrain_teacher).parameters
    b = inspect.signature(distill).parameters
    shared = ["data", "config", "epochs", "batch_size", "lr", "img_size", "workers",
              "max_iters", "eval_every", "checkpoint_every", "checkpoint_every_iters", "device",
              "seed"]
    for name in shared:
        oa, ob = a[name].default, b[name].default
        assert (oa.param_decls, oa.default, oa.help, oa.min) == \
            (ob.param_decls, ob.default, ob.help, ob.min), name


def _cfg(tiny_dataset, **train):
    return load_config(None, {
        "data": {"root": str(tiny_dataset), "img_size": 64, "augment": False, "workers": 0},
        "model": {"name": "gfl_mbv2"},
        "train": {"batch_size": 2, "epochs": 1, "device": "cpu", **train}})


def test_assemble_trainer_builds_the_standard_run(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, lr=0.02, base_batch_size=4)
    datasets = build_datasets(cfg)
    run = assemble_trainer(cfg, tmp_path, model_name="gfl_mbv2", datasets=datasets,
                           device=torch.device("cpu"))
    t = run.trainer
    assert run.checkpoint is not None and run.checkpoint in t.hooks
    assert isinstance(run.checkpoint, CheckpointHook) and run.checkpoint.run_dir == tmp_path
    # 4 train images, batch 2; lr scaled by 2 / 4
    assert t.iters_per_epoch == 2 and t.max_iters == 2
    assert t.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.01)
    assert run.meta["model_name"] == "gfl_mbv2" and run.meta["class_names"] == list(
        datasets["train"].class_names)
    assert run.header.startswith("gfl_mbv2 on ") and "lr 0.01" in run.header
    # without a run directory: no writers, no checkpoint hook
    bare = assemble_trainer(cfg, None, model_name="gfl_mbv2", datasets=datasets,
                            device=torch.device("cpu"))
    assert bare.checkpoint is None and not any(isinstance(h, CheckpointHook)
                                               for h in bare.trainer.hooks)


def test_cpu_amp_reaches_the_trainer_and_the_log_header(tiny_dataset):
    for on in (False, True):
        cfg = _cfg(tiny_dataset, cpu_amp=on)
        run = assemble_trainer(cfg, None, model_name="gfl_mbv2", datasets=build_datasets(cfg),
                               device=torch.device("cpu"))
        assert run.trainer.amp_dtype == (torch.bfloat16 if on else None)
        assert ("bfloat16 autocast" in run.header) == on


def test_an_extension_adds_parameters_state_and_step_after_the_model(tiny_dataset):
    cfg = _cfg(tiny_dataset)
    datasets = build_datasets(cfg)
    seen = {}
    extra = torch.nn.Linear(2, 2)

    def step(trainer):
        trainer.next_batch()

    def extend(model):
        seen["model"] = model
        # built after the model, from the seeded RNG: the same weights every time
        seen["draw"] = torch.rand(1).item()
        return TrainerExtension(params=list(extra.parameters()), step_fn=step,
                                checkpointables={"extra_module": extra})

    run = assemble_trainer(cfg, None, model_name="gfl_mbv2", datasets=datasets,
                           device=torch.device("cpu"), title="custom", meta_extra={"x": 1},
                           extend=extend)
    t = run.trainer
    params = t.optimizer.param_groups[0]["params"]
    assert params[-2:] == list(extra.parameters())
    assert params[:-2] == [p for p in seen["model"].parameters() if p.requires_grad]
    assert t.step_fn is step and t.checkpointables == {"extra_module": extra}
    assert run.meta["x"] == 1 and run.title == "custom" and run.header.startswith("custom on ")
    again = {}

    def extend_again(model):
        again["draw"] = torch.rand(1).item()
        return TrainerExtension()

    assemble_trainer(cfg, None, model_name="gfl_mbv2", datasets=datasets,
                     device=torch.device("cpu"), extend=extend_again)
    assert again["draw"] == seen["draw"]
    assert "extra_module" in t.state_dict()["extra"]
