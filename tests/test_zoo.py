"""Every zoo entry builds, trains and predicts at 128 px; builder options are validated."""

import math

import pytest
import torch
import torchvision

from meddet.errors import MedDetError
from meddet.models import DETECTORS, GFLDetector, NmODE2, build_detector

# Parameter counts at num_classes=2 the design targets (paper Table I / Fig. 3 numbers).
PARAM_TARGETS_M = {"gfl_r50": 32.32, "gfl_r101": 51.24, "gfl_r152": 66.51, "meddet": 10.42}
TEACHERS_AND_STUDENT = {"gfl_r50", "gfl_r101", "gfl_r152", "meddet", "meddet_lite"}
# The CPU student's narrower neck and head; every other entry has the paper's 256.
NECK_CHANNELS = {"meddet_lite": 128}


def _targets():
    return [
        {"boxes": torch.tensor([[20.0, 30.0, 70.0, 100.0], [80.0, 10.0, 120.0, 40.0]]),
         "labels": torch.tensor([0, 1]), "scale": 0.5, "orig_size": (256, 256)},
        # An image without objects must work in training too.
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "scale": 0.5, "orig_size": (256, 256)},
    ]


@pytest.mark.parametrize("name", list(DETECTORS))
def test_zoo_entry_trains_and_predicts(name):
    torch.manual_seed(0)
    model = build_detector(name, num_classes=2)
    assert isinstance(model, GFLDetector) and model.name == name and model.num_classes == 2
    assert model.strides == (8, 16, 32, 64, 128) and model.reg_max == 16
    assert model.fpn_channels == NECK_CHANNELS.get(name, 256)
    expected_nmode = "head" if name in TEACHERS_AND_STUDENT else "none"
    assert model.nmode == expected_nmode
    has_ode = any(isinstance(m, NmODE2) for m in model.head.modules())
    assert has_ode == (expected_nmode == "head")
    if name in PARAM_TARGETS_M:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params / PARAM_TARGETS_M[name] - 1) < 0.015, params

    images = torch.randn(2, 3, 128, 128)
    model.train()
    losses = model(images, _targets())
    assert {"loss", "loss_qfl", "loss_dfl", "loss_giou", "num_pos"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["num_pos"].item() > 0 and not losses["num_pos"].requires_grad
    losses["loss"].backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.neck.lateral_convs[0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        dets = model(images, _targets())
    assert len(dets) == 2
    for d in dets:
        k = d["boxes"].shape[0]
        assert d["boxes"].shape == (k, 4) and d["scores"].shape == (k,)
        assert d["labels"].dtype == torch.long and k <= 100
        # Boxes come back in original pixels (input 128 px / scale 0.5 = 256 px).
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 256).all()


def test_unknown_name_lists_valid_names():
    with pytest.raises(MedDetError, match="gfl_r50.*meddet"):
        build_detector("gfl_r18")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"lambda_qfl": -0.1}, "lambda_qfl"),
        ({"lambda_qfl": 0.8, "mu_dfl": 0.3}, "lambda_qfl"),
        ({"nmode": "neck"}, "placement"),
        ({"nmode": "fpn", "nmode_kwargs": {"T": 2.0}}, "nmode_kwargs"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_invalid_overrides(overrides, match):
    with pytest.raises(MedDetError, match=match):
        build_detector("gfl_shufflenetv2", **overrides)


def test_overrides_reach_the_modules():
    m = build_detector("gfl_shufflenetv2", nmode="fpn", score_thr=0.3, nms_iou=0.5,
                       max_per_img=7, lambda_qfl=0.5, mu_dfl=0.1, frozen_stages=0,
                       norm_eval=True, pretrained=None)
    assert m.nmode == "fpn" and m.neck.nmode is not None and m.backbone.nmode is None
    assert not any(isinstance(x, NmODE2) for x in m.head.modules())
    post = m.postprocessor
    assert (post.score_thr, post.nms_iou, post.max_per_img) == (0.3, 0.5, 7)
    assert (m.lambda_qfl, m.mu_dfl) == (0.5, 0.1)
    assert not any(p.requires_grad for p in m.backbone.conv1.parameters())
    assert m.backbone.stage2[0].branch2[0].weight.requires_grad
    m = build_detector("meddet", nmode="backbone", nmode_kwargs=None)
    assert m.backbone.nmode is not None and m.neck.nmode is None
    m = build_detector("meddet", nmode="none", num_classes=3)
    assert not any(isinstance(x, NmODE2) for x in m.modules())
    assert m.head.gfl_cls.out_channels == 3
    m = build_detector("meddet", nmode_kwargs={"T": 0.5, "method": "euler"})
    assert m.head.cls_nmode.T == 0.5 and m.head.reg_nmode.method == "euler"
    # None means "keep the default", so an unset config field can be passed straight through.
    assert build_detector("meddet", nmode=None, score_thr=None).nmode == "head"


def test_backbone_freezing_defaults_depend_on_pretrained(tmp_path):
    # From scratch: nothing frozen, BatchNorm uses batch statistics.
    scratch = build_detector("gfl_shufflenetv2").train()
    assert all(p.requires_grad for p in scratch.backbone.parameters())
    assert scratch.backbone.conv1[1].training
    # With weights (a torchvision-layout state dict file): mmdetection's fine-tuning defaults.
    weights = tmp_path / "sv2.pt"
    torch.save(torchvision.models.shufflenet_v2_x1_0(weights=None).state_dict(), weights)
    tuned = build_detector("gfl_shufflenetv2", pretrained=str(weights)).train()
    assert not any(p.requires_grad for p in tuned.backbone.conv1.parameters())
    assert not tuned.backbone.stage3[0].branch1[1].training  # BatchNorm kept in eval mode
    assert all(p.requires_grad for p in tuned.head.parameters())
