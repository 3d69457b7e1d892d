"""The demo's Tables I and II: rows from a demo result (:func:`build_tables`) and the Markdown
of ``results.md`` (:func:`format_tables`)."""

from __future__ import annotations

import math
from typing import Any

from meddet import paper
from meddet.demo.plan import PAPER_IMG_SIZE, PLAIN_STUDENT, TEACHERS, DemoPlan, scale_note

DISPLAY_NAMES = {
    "gfl_r50": "GFL ResNet50 (teacher)",
    "gfl_r101": "GFL ResNet101 (teacher)",
    "gfl_r152": "GFL ResNet152 (teacher)",
    "gfl_mbv2": "GFL MobileNetV2 (plain student)",
    "meddet": "MedDet (distilled student)",
    "meddet_lite": "MedDet-Lite (distilled student)",
}


def _num(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return format(v, spec)


def build_tables(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows of Table I (accuracy) and Table II (accuracy and cost) from a demo result.

    Args:
        result: at least ``students`` and ``models`` (``{name: {"test": metrics, "bench":
            row}}``) of a :func:`~meddet.demo.run_demo` result.

    Returns:
        ``{"table1": [{"model", "name", "mAP", "mAP50", "AR100", "recall"}], "table2": [{"model",
        "name", "mAP", "recall", "fps", "params_m", "gflops", "paper_params_m",
        "paper_gflops"}]}``; models absent from ``result`` are left out.
    """
    models = result["models"]
    students = result["students"]
    t1_names = [PLAIN_STUDENT, *TEACHERS, *students]
    table1 = [{"model": n, "name": DISPLAY_NAMES.get(n, n),
               **{k: models[n]["test"].get(k) for k in ("mAP", "mAP50", "AR100", "recall")}}
              for n in t1_names if n in models]
    table2 = []
    for n in [*TEACHERS, *students]:
        if n not in models:
            continue
        b = models[n]["bench"]
        reported = paper.TABLE2.get(n)
        table2.append({"model": n, "name": DISPLAY_NAMES.get(n, n),
                       "mAP": models[n]["test"]["mAP"], "recall": models[n]["test"]["recall"],
                       "fps": b["fps"], "params_m": b["params_m"], "gflops": b["gflops_512"],
                       "paper_params_m": reported[0] if reported else None,
                       "paper_gflops": reported[1] if reported else None})
    return {"table1": table1, "table2": table2}


def initial_weights_line(init: dict[str, str], pretrained: str) -> str:
    """One line: which models started from ImageNet weights (``init`` as in ``results.json``'s
    ``initial_weights``)."""
    got = [n for n, v in init.items() if v == "imagenet"]
    return ("Initial weights: " + (f"ImageNet for {', '.join(got)}; random for the rest" if got
                                   else "random for every model")
            + f" (--pretrained {pretrained}).")


def format_tables(result: dict[str, Any]) -> str:
    """Both tables as Markdown (what ``results.md`` holds, and what the CLI prints)."""
    p = result["plan"]
    t = build_tables(result)
    plan = DemoPlan(**{**p, "lr_steps": tuple(p.get("lr_steps", (0.75, 0.9)))})
    lines = [
        "# MedDet demo results",
        "",
        f"Scale ({plan.name} plan): {plan.scale_line()}.",
        "",
        scale_note(plan),
        "",
        initial_weights_line(result.get("initial_weights") or {},
                             result.get("pretrained", "none")),
        "",
        f"## Table I: detection on the synthetic test split ({p['num_test']} images)",
        "",
        "| model | mAP | mAP50 | AR100 | recall@.5 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in t["table1"]:
        lines.append(f"| {r['name']} | {_num(r['mAP'])} | {_num(r['mAP50'])} | "
                     f"{_num(r.get('AR100'))} | {_num(r['recall'])} |")
    lines += ["", "recall@.5: share of all ground-truth boxes matched at IoU 0.5 among each "
              "image's top 100 detections (classes pooled); AR100: COCO's average recall over "
              "classes and IoU 0.5:0.95."]
    bench = result["bench"]
    lines += [
        "",
        (f"## Table II: accuracy and cost (FPS at {p['img_size']} px on {bench['device']}, "
         f"{bench['threads']} threads, batch 1, random weights; parameters and GFLOPs at "
         f"{PAPER_IMG_SIZE} px like the paper)"),
        "",
        "| model | mAP | recall@.5 | FPS | params (M) | GFLOPs | paper params (M) | paper GFLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in t["table2"]:
        lines.append(f"| {r['name']} | {_num(r['mAP'])} | {_num(r['recall'])} | "
                     f"{_num(r['fps'], '.1f')} | {_num(r['params_m'], '.2f')} | "
                     f"{_num(r['gflops'], '.2f')} | {_num(r['paper_params_m'], '.2f')} | "
                     f"{_num(r['paper_gflops'], '.2f')} |")
    lines += [
        "",
        f"GFLOPs: {bench['flops']}, backbone + FPN + head. FPS: forward + post-processing.",
        "",
        "## Learning curves and predictions",
        "",
        "Training loss and validation mAP50 of every model: [curves.png](curves.png).",
        "",
        "![learning curves](curves.png)",
        "",
        "The distilled student's detections on test images (ground truth in white): "
        "[preview.png](preview.png).",
        "",
        "![predicted vs true boxes](preview.png)",
        "",
        "The plain student's, on the same images: [preview_plain.png](preview_plain.png).",
        "",
        "![plain student: predicted vs true boxes](preview_plain.png)",
        "",
        "Time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())
        + f"; total {result['elapsed_s']:.0f} s on {result['machine']['cpu']} "
        f"({result['machine']['threads']} torch threads, load average "
        f"{result['machine']['load_start']} at the start).",
        "",
    ]
    return "\n".join(lines)
