"""FPN: output shapes and strides, the mmdetection GFL wiring, init and the nmODE² option."""

import pytest
import torch
from torch import nn

from meddet.errors import MedDetError
from meddet.models.fpn import FPN

IN_CHANNELS = (32, 96, 1280)


def _inputs(size=128, batch=2, channels=IN_CHANNELS):
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(channels, (8, 16, 32))]


def test_output_shapes_and_strides():
    fpn = FPN(IN_CHANNELS, 64)
    assert fpn.out_channels == 64 and fpn.strides == (8, 16, 32, 64, 128)
    outs = fpn(_inputs())
    assert len(outs) == 5
    for out, s in zip(outs, fpn.strides):
        assert tuple(out.shape) == (2, 64, 128 // s, 128 // s)


def test_odd_sizes_upsample_to_the_finer_map():
    # 100 px is not a multiple of 32: the top-down path must still add matching shapes.
    feats = [torch.randn(1, c, h, h) for c, h in zip(IN_CHANNELS, (13, 7, 4))]
    outs = FPN(IN_CHANNELS, 16)(feats)
    assert [o.shape[-1] for o in outs] == [13, 7, 4, 2, 1]


def test_structure_matches_mmdet_gfl():
    fpn = FPN((512, 1024, 2048))
    assert all(c.kernel_size == (1, 1) and c.bias is not None for c in fpn.lateral_convs)
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in fpn.fpn_convs)
    assert [c.stride for c in fpn.extra_convs] == [(2, 2), (2, 2)]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU)) for m in fpn.modules())
    # mmdet GFL-R50 neck on C3-C5: 1x1 laterals + 5 3x3 convs, all with bias.
    expected = sum(c * 256 + 256 for c in (512, 1024, 2048)) + 5 * (256 * 256 * 9 + 256)
    assert sum(p.numel() for p in fpn.parameters()) == expected
    assert all(torch.count_nonzero(c.bias) == 0 for c in fpn.modules() if isinstance(c, nn.Conv2d))


def test_p6_reads_p5_output_and_p7_has_no_relu():
    torch.manual_seed(0)  # with 16 signed channels a negative P6 value is certain in practice
    fpn = FPN(IN_CHANNELS, 16)
    feats = _inputs(64, 1)
    outs = fpn(feats)
    torch.testing.assert_close(outs[3], fpn.extra_convs[0](outs[2]))
    # No ReLU between P6 and P7: P7 is the conv of the raw (signed) P6.
    assert (outs[3] < 0).any()
    torch.testing.assert_close(outs[4], fpn.extra_convs[1](outs[3]))


def test_cpu_bfloat16_autocast_keeps_the_extra_levels_in_float32():
    torch.manual_seed(0)
    fpn = FPN(IN_CHANNELS, 16, norm="gn")
    feats = _inputs(64, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = fpn(feats)
    # P3-P5 follow autocast; P6/P7 (1x1 maps at 64 px) are computed in float32, from P5 as
    # autocast left it, so they equal the float32 convs of that map.
    assert [o.dtype for o in outs] == [torch.bfloat16] * 3 + [torch.float32] * 2
    torch.testing.assert_close(outs[3], fpn.extra_convs[0](outs[2].float()))
    torch.testing.assert_close(outs[4], fpn.extra_convs[1](outs[3]))
    sum(o.float().sum() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in fpn.parameters() if p.grad is not None)


def test_top_down_path_is_nearest_upsample_plus_add():
    fpn = FPN(IN_CHANNELS, 8, num_outs=3)
    feats = _inputs(64, 1)
    lat = [conv(f) for conv, f in zip(fpn.lateral_convs, feats)]
    p5 = lat[2]
    p4 = lat[1] + p5.repeat_interleave(2, -1).repeat_interleave(2, -2)
    p3 = lat[0] + p4.repeat_interleave(2, -1).repeat_interleave(2, -2)
    outs = fpn(feats)
    torch.testing.assert_close(outs[0], fpn.fpn_convs[0](p3))
    torch.testing.assert_close(outs[2], fpn.fpn_convs[2](p5))


def test_nmode_option_keeps_shapes_and_adds_no_parameters():
    plain = FPN(IN_CHANNELS, 16)
    ode = FPN(IN_CHANNELS, 16, nmode=True)
    assert sum(p.numel() for p in ode.parameters()) == sum(p.numel() for p in plain.parameters())
    ode.load_state_dict(plain.state_dict())
    feats = _inputs(64, 1)
    a, b = plain(feats), ode(feats)
    assert [x.shape for x in a] == [x.shape for x in b]
    assert not torch.allclose(a[0], b[0])


def test_custom_strides_and_bad_arguments():
    assert FPN((8, 16), 8, num_outs=4, in_strides=(4, 8)).strides == (4, 8, 16, 32)
    with pytest.raises(MedDetError):
        FPN(IN_CHANNELS, num_outs=2)
    with pytest.raises(MedDetError):
        FPN(IN_CHANNELS, in_strides=(8, 16))
