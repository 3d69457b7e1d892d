"""GFL head, post-process and the detector's loss wiring, on tiny stand-in trunks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meddet.errors import MedDetError
from meddet.models import NmODE2
from meddet.models.box_ops import aligned_iou, distance2bbox
from meddet.models.detector import GFLDetector
from meddet.models.gfl_head import GFLHead, flatten_levels
from meddet.models.losses import giou_loss, quality_focal_loss
from meddet.models.postprocess import GFLPostProcess

STRIDES = (8, 16, 32, 64, 128)
REG_BINS = 17  # reg_max + 1


class _Pyramid(nn.Module):
    """Stand-in backbone+neck: a 1x1 conv, then average pooling to each stride."""

    def __init__(self, channels: int = 32, strides=STRIDES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.strides = strides

    def forward(self, x):
        y = self.conv(x)
        return [F.avg_pool2d(y, s, ceil_mode=True) for s in self.strides]


def _tiny_detector(strides=STRIDES, **kwargs) -> GFLDetector:
    torch.manual_seed(0)
    # 8 groups, not 32: GroupNorm needs more than one value per group on the 1x1 P7 map.
    head = GFLHead(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1,
                   num_levels=len(strides), norm_groups=8)
    return GFLDetector(name="tiny", num_classes=2, backbone=_Pyramid(strides=strides),
                       neck=nn.Identity(), head=head, nmode="none", strides=strides, **kwargs)


def _feats(batch=2, size=64, channels=32):
    return [torch.randn(batch, channels, -(-size // s), -(-size // s)) for s in STRIDES]


def test_head_shapes_and_initialisation():
    head = GFLHead(num_classes=3, in_channels=32, feat_channels=32)
    cls, reg = head(_feats())
    assert [tuple(c.shape) for c in cls] == [(2, 3, n, n) for n in (8, 4, 2, 1, 1)]
    assert [tuple(r.shape) for r in reg] == [(2, 4 * REG_BINS, n, n) for n in (8, 4, 2, 1, 1)]
    # Prior probability 0.01: the classifier starts near sigmoid = 0.01 everywhere.
    assert head.gfl_cls.bias[0].item() == pytest.approx(-math.log(99))
    assert abs(cls[0].sigmoid().mean().item() - 0.01) < 2e-3
    towers = [m for m in head.cls_convs if isinstance(m, nn.GroupNorm)]
    assert len(towers) == 4 and towers[0].num_groups == 32
    with pytest.raises(ValueError, match="divisible"):
        GFLHead(num_classes=2, feat_channels=48)


def test_per_level_scale_multiplies_the_regression_logits():
    head = GFLHead(num_classes=2, in_channels=32, feat_channels=32)
    feats = _feats()
    _, before = head(feats)
    with torch.no_grad():
        head.scales[2] = 2.0
    _, after = head(feats)
    torch.testing.assert_close(after[2], 2 * before[2])
    torch.testing.assert_close(after[0], before[0])


def test_nmode_head_placement_is_one_block_per_branch():
    plain = GFLHead(num_classes=2, in_channels=32, feat_channels=32)
    ode = GFLHead(num_classes=2, in_channels=32, feat_channels=32, nmode=True,
                  nmode_kwargs={"T": 0.5})
    assert isinstance(ode.cls_nmode, NmODE2) and isinstance(ode.reg_nmode, NmODE2)
    assert ode.cls_nmode is not ode.reg_nmode and ode.cls_nmode.T == 0.5
    ode.load_state_dict(plain.state_dict())  # the parameter-free blocks add no weights
    feats = _feats()
    assert not torch.allclose(ode(feats)[0][0], plain(feats)[0][0])


def test_flatten_levels_order():
    maps = [torch.arange(6.0).reshape(1, 1, 2, 3), torch.tensor([[[[6.0]]]])]
    assert flatten_levels(maps).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6]


def _one_hot_dist(distances):
    """Regression logits [4*17] whose integral is exactly the given integer distances."""
    logits = torch.full((4, REG_BINS), -1e4)
    for side, d in enumerate(distances):
        logits[side, d] = 0.0
    return logits.reshape(-1)


def test_postprocess_hand_case():
    # Two levels only (strides 8 and 16) on a 64x64 input; points at x * stride.
    cls = [torch.full((1, 2, 8, 8), -10.0), torch.full((1, 2, 4, 4), -10.0)]
    reg = [torch.zeros(1, 4 * REG_BINS, 8, 8), torch.zeros(1, 4 * REG_BINS, 4, 4)]
    points = [torch.stack(torch.meshgrid(torch.arange(n) * s, torch.arange(n) * s,
                                         indexing="xy"), -1).reshape(-1, 2).float()
              for n, s in ((8, 8), (4, 16))]
    # Level 0, row 2, col 3 -> point (24, 16); distances (1, 1, 2, 2) bins * 8 px.
    cls[0][0, 1, 2, 3] = 3.0
    reg[0][0, :, 2, 3] = _one_hot_dist([1, 1, 2, 2])
    # Level 1, row 1, col 1 -> point (16, 16): box (0, 0, 48, 48) after clipping x1 = -16.
    cls[1][0, 0, 1, 1] = 2.0
    reg[1][0, :, 1, 1] = _one_hot_dist([2, 1, 2, 2])
    # A near-duplicate of the first box with lower score: same class is suppressed, and the
    # same box in the other class survives (class-wise NMS).
    cls[0][0, 1, 2, 4] = 1.0  # point (32, 16), distances (2, 1, 1, 2) -> same box
    reg[0][0, :, 2, 4] = _one_hot_dist([2, 1, 1, 2])
    cls[0][0, 0, 2, 4] = 0.5
    # Below the score threshold: sigmoid(-3) = 0.047 < 0.05.
    cls[0][0, 0, 5, 5] = -3.0
    post = GFLPostProcess(score_thr=0.05, nms_iou=0.6, max_per_img=100)
    (det,) = post(cls, reg, points, (8, 16), (64, 64))
    expected_boxes = torch.tensor([[16.0, 8, 40, 32], [0, 0, 48, 48], [16, 8, 40, 32]])
    torch.testing.assert_close(det["boxes"], expected_boxes)
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 0.5])))
    assert det["labels"].tolist() == [1, 0, 0] and det["labels"].dtype == torch.long
    # Mapping back: scale 2 (input px per original px), then clip to the original 20x30 image.
    (det2,) = GFLPostProcess(max_per_img=2)(cls, reg, points, (8, 16), (64, 64),
                                           [{"scale": 2.0, "orig_size": (20, 30)}])
    torch.testing.assert_close(det2["boxes"], torch.tensor([[8.0, 4, 20, 16], [0, 0, 24, 20]]))


def test_zero_gt_image_gives_classification_loss_only():
    det = _tiny_detector()
    images = torch.randn(2, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = det(images, [empty, empty])
    assert losses["num_pos"].item() == 0
    assert losses["loss_dfl"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_qfl"].item() > 0
    losses["loss"].backward()
    assert det.head.gfl_cls.weight.grad.abs().sum() > 0
    assert det.head.gfl_reg.weight.grad is not None  # graph stays connected
    assert det.head.gfl_reg.weight.grad.abs().sum() == 0
    # Mixed batch: the empty image adds background QFL but no positives.
    one = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}
    mixed = det(images, [one, empty])
    alone = det(images[:1], [one])
    assert mixed["num_pos"].item() == alone["num_pos"].item() > 0
    assert mixed["loss_qfl"].item() > alone["loss_qfl"].item()
    torch.testing.assert_close(mixed["loss_giou"], alone["loss_giou"])


def test_loss_normalisation_hand_case():
    """Uniform distributions and zero logits make every term computable by hand."""
    det = _tiny_detector()
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    cls = [torch.zeros(1, 2, h, w) for h, w in sizes]  # sigmoid = 0.5 everywhere
    reg = [torch.zeros(1, 4 * REG_BINS, h, w) for h, w in sizes]  # uniform: integral = 8 bins
    tgt = [{"boxes": torch.tensor([[10.0, 6.0, 50.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = det.loss(cls, reg, tgt, (64, 64))
    asg = det.assign(cls, tgt, (64, 64))
    pos = asg.pos_mask[0]
    num_pos = int(pos.sum())
    assert num_pos >= 2 and losses["num_pos"].item() == num_pos
    # Predicted box of a positive: its point +- 8 strides on every side.
    s = asg.strides[pos][:, None]
    pred = distance2bbox(asg.points[pos] / s, torch.full((num_pos, 4), 8.0))
    gt = asg.boxes[0, pos] / s
    # GIoU: all weights equal (max sigmoid 0.5), so the weighted mean is the plain mean.
    torch.testing.assert_close(losses["loss_giou"], giou_loss(pred, gt).mean())
    # DFL of a uniform 17-bin distribution is log 17 whatever the target.
    torch.testing.assert_close(losses["loss_dfl"], torch.tensor(math.log(17.0)))
    # QFL: each background (location, class) costs 0.5² · log 2; each positive's own class
    # costs QFL(0, IoU); divided by the number of positives.
    num_cells = sum(h * w for h, w in sizes) * 2
    iou = aligned_iou(pred, gt)
    pos_terms = quality_focal_loss(torch.zeros(num_pos, 1), torch.zeros(num_pos, dtype=torch.long),
                                   iou).sum()
    expected_qfl = ((num_cells - num_pos) * 0.25 * math.log(2) + pos_terms) / num_pos
    torch.testing.assert_close(losses["loss_qfl"], expected_qfl)
    # Eq. 12 with the defaults equals mmdetection's 1 : 0.25 : 2 total.
    gfl_total = losses["loss_qfl"] + 0.25 * losses["loss_dfl"] + 2 * losses["loss_giou"]
    torch.testing.assert_close(losses["loss"], gfl_total)


def test_eq12_weights_and_validation():
    det = _tiny_detector(lambda_qfl=0.5, mu_dfl=0.2, det_scale=1.0)
    images = torch.randn(1, 3, 64, 64)
    tgt = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([0])}]
    out = det(images, tgt)
    torch.testing.assert_close(
        out["loss"], 0.5 * out["loss_qfl"] + 0.2 * out["loss_dfl"] + 0.3 * out["loss_giou"])
    for lam, mu in ((-0.1, 0.2), (0.7, 0.4)):
        with pytest.raises(MedDetError, match="lambda_qfl"):
            _tiny_detector(lambda_qfl=lam, mu_dfl=mu)
    with pytest.raises(MedDetError, match="placement"):
        GFLDetector(name="x", num_classes=2, backbone=_Pyramid(), neck=nn.Identity(),
                    head=GFLHead(num_classes=2, in_channels=32, feat_channels=32, norm_groups=8),
                    nmode="neck")


def test_assignment_and_raw_outputs_for_distillation():
    det = _tiny_detector()
    images = torch.randn(2, 3, 64, 64)
    feats, cls, reg = det.forward_raw(images)
    assert len(feats) == 5 and len(cls) == 5 and reg[0].shape[1] == 4 * REG_BINS
    box = torch.tensor([[8.0, 8.0, 40.0, 48.0]])
    tgts = [{"boxes": box, "labels": torch.tensor([1])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    asg = det.assign(cls, tgts, (64, 64))
    num_loc = sum(c.shape[-2] * c.shape[-1] for c in cls)
    assert asg.labels.shape == (2, num_loc) and asg.boxes.shape == (2, num_loc, 4)
    assert asg.anchors.shape == (num_loc, 4) and asg.points.shape == (num_loc, 2)
    assert asg.pos_mask[0].any() and not asg.pos_mask[1].any()
    assert (asg.labels[0, asg.pos_mask[0]] == 1).all() and (asg.labels[1] == 2).all()
    # Positive points lie inside their box (the flattened order matches the points).
    p = asg.points[asg.pos_mask[0]]
    assert ((p > box[:, :2]) & (p < box[:, 2:])).all()
    cls_flat, reg_flat = det.flatten_outputs(cls, reg)
    assert cls_flat.shape == (2, num_loc, 2) and reg_flat.shape == (2, num_loc, 4 * REG_BINS)


def test_eval_forward_returns_detections():
    det = _tiny_detector().eval()
    with torch.no_grad():
        out = det(torch.randn(2, 3, 64, 64))
    assert len(out) == 2
    for d in out:
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="targets"):
        det.train()(torch.randn(1, 3, 64, 64))


def test_depthwise_tower_structure_and_parameter_count():
    # Hand count, C = 8, 2 blocks per tower, 4 GroupNorm groups:
    # dense block  = 3x3 conv 8*8*9 + GN 2*8            = 592
    # dw-sep block = 3x3 dw 8*9 + 1x1 8*8 + GN 2*8      = 152
    kw = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=2, norm_groups=4)
    dense, dw = GFLHead(**kw), GFLHead(**kw, depthwise=True)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(dense.cls_convs) == 2 * 592 and count(dw.cls_convs) == 2 * 152
    assert count(dw.reg_convs) == 2 * 152
    groups = [m.groups for m in dw.cls_convs if isinstance(m, torch.nn.Conv2d)]
    assert groups == [8, 1, 8, 1]
    feats = [torch.randn(2, 8, s, s) for s in (16, 8, 4, 2, 1)]
    for a, b in zip(dense(feats), dw(feats)):
        assert [t.shape for t in a] == [t.shape for t in b]
