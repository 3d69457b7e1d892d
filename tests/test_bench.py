"""`meddet bench` and :mod:`meddet.benchmark`: counts, the FLOP convention, JSON, bad input."""

import json
import sys

import pytest
import torch
from torch import nn

from meddet.benchmark import benchmark_models, count_gflops, count_params, relative_to
from meddet.cli import main
from meddet.models import DETECTORS, build_detector

SMALL = "gfl_shufflenetv2"


class _OneConv(nn.Module):
    """A 'detector' whose forward_raw is one 3x3 conv: its FLOPs are known by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward_raw(self, x):
        y = self.conv(x)
        return [y], [y], [y]


def test_flop_convention_is_one_mac_per_flop():
    # 32 x 32 outputs x 8 channels x (3 x 3 x 3) multiply-adds each.
    assert count_gflops(_OneConv(), 32) * 1e9 == 32 * 32 * 8 * 27


def test_library_params_and_gflops_of_a_small_model():
    res = benchmark_models([SMALL], img_size=128, fps=False)
    assert res["img_size"] == 128 and res["flops"].startswith("fvcore")
    (row,) = res["models"]
    assert row["name"] == SMALL
    assert row["params_m"] == pytest.approx(count_params(build_detector(SMALL)) / 1e6)
    assert row["fps"] is None and row["latency_ms_mean"] is None and row["peak_mem_mb"] is None
    # Every counted op scales with the map area, and 128 px keeps all levels integral.
    assert count_gflops(build_detector(SMALL), 256) == pytest.approx(4 * row["gflops"], rel=1e-9)


def test_timing_fields():
    res = benchmark_models([SMALL], img_size=64, warmup=1, iters=2, threads=1)
    row = res["models"][0]
    assert res["threads"] == 1 and res["iters"] == 2
    assert row["fps"] > 0 and row["latency_ms_mean"] > 0 and row["latency_ms_std"] >= 0
    assert row["fps"] == pytest.approx(1000 / row["latency_ms_mean"], rel=1e-6)
    if sys.platform.startswith("linux"):
        assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0


def test_relative_to():
    result = {"models": [
        {"name": "a", "params_m": 40.0, "gflops": 50.0, "fps": 2.0},
        {"name": "b", "params_m": 10.0, "gflops": 30.0, "fps": 5.0},
    ]}
    r = relative_to(result, "a")
    assert r["b"] == pytest.approx({"speedup": 2.5, "params_reduction_pct": 75.0,
                                    "flops_reduction_pct": 40.0})
    assert r["a"]["speedup"] == 1.0


def test_cli_no_fps_json_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", f"{SMALL},gfl_shufflenet", "--img-size", "64",
                 "--no-fps", "--ref", SMALL, "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "1 multiply-add = 1 FLOP" in text
    data = json.loads(out.read_text())
    assert {"device", "torch", "threads", "img_size", "models"} <= set(data)
    assert data["device"] == "cpu" and data["img_size"] == 64 and data["ref"] == SMALL
    names = [m["name"] for m in data["models"]]
    assert names == [SMALL, "gfl_shufflenet"]
    for m in data["models"]:
        assert {"name", "params_m", "gflops", "fps", "latency_ms_mean", "latency_ms_std",
                "peak_mem_mb"} <= set(m)
        assert m["fps"] is None and m["params_m"] > 0 and m["gflops"] > 0
    assert data["models"][0]["params_reduction_pct"] == 0.0


def test_cli_json_to_stdout_keeps_stdout_parseable(capsys):
    assert main(["bench", "--models", SMALL, "--img-size", "64", "--no-fps", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"][0]["name"] == SMALL


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--models", "gfl_r18"], "unknown model 'gfl_r18'"),
        (["--img-size", "100"], "multiple of 32"),
        (["--models", SMALL, "--ref", "gfl_r50"], "--ref"),
        (["--models", SMALL, "--iters", "0"], "--iters"),
        (["--models", f"{SMALL},"], "empty item"),
    ],
)
def test_cli_bad_input_exits_2(capsys, args, needle):
    assert main(["bench", *args, "--no-fps"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and needle in err and len(err.splitlines()) == 1
    if "unknown model" in needle:
        assert all(name in err for name in DETECTORS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda_exits_2(capsys):
    assert main(["bench", "--models", SMALL, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available" in err and len(err.splitlines()) == 1
