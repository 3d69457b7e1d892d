"""The figures reported by the MedDet paper (arXiv 2409.00204), kept in one place.

The benchmark, the demo and the reproduction study compare against these; nothing here is
measured by this library.
"""

from __future__ import annotations

__all__ = ["FPS", "MAP", "TABLE2"]

# Table II: parameters (M) and GFLOPs at the paper's 512 px input.
TABLE2: dict[str, tuple[float, float]] = {
    "gfl_r152": (66.51, 92.13),
    "gfl_r101": (51.24, 71.20),
    "gfl_r50": (32.32, 50.21),
    "meddet": (10.42, 31.69),
}

# Frames per second on the paper's GPU (Table II).
FPS: dict[str, float] = {"gfl_r50": 3.9, "meddet": 19.8}

# mAP (%) on CDH-1848, read from the authors' project page (steve-zeyu-zhang.github.io/MedDet,
# static/images/compare1, compare2, ablation1-3.svg). Tables III and IV start from the
# *distilled* student without nmODE² (84.2), not from the plain GFL-MobileNetV2 (80.8).
MAP: dict[str, float] = {
    "gfl_mbv2": 80.8, "gfl_mbv2_1.4": 81.0, "gfl_effb0": 80.8, "gfl_effb1": 81.0,
    "gfl_shufflenet": 75.0, "gfl_shufflenetv2": 77.8, "mgd": 84.2, "ld": 84.7, "fgd": 84.5,
    "meddet": 85.5, "gfl_r50": 85.6, "gfl_r101": 85.8, "gfl_r152": 86.1,
    "abl_base": 84.2, "abl_nmode": 85.0, "abl_lwff": 85.3, "abl_aatm": 85.5,
    "nmode_none": 84.2, "nmode_backbone": 83.6, "nmode_fpn": 84.3, "nmode_head": 85.0,
    "fusion_sum": 85.1, "fusion_concat": 85.0, "fusion_lwff": 85.5,
}
