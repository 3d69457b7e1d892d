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


def test_cli_onnxruntime_side_by_side_with_torch(capsys):
    # Export, onnxruntime session + numpy post-process; eager torch is added automatically.
    code = main(["bench", "--models", SMALL, "--img-size", "64", "--iters", "1", "--warmup", "0",
                 "--threads", "1", "--runtime", "onnxruntime", "--profile", "--json", "-"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    torch_row, ort_row = res["models"]
    assert (torch_row["runtime"], ort_row["runtime"]) == ("torch", "onnxruntime")
    assert torch_row["optimized"] and not ort_row["optimized"]
    assert ort_row["label"] == f"{SMALL} (onnxruntime)" and torch_row["label"] == SMALL
    for row in (torch_row, ort_row):
        assert row["fps"] > 0
        assert row["gflops_per_s"] == pytest.approx(row["gflops"] * row["fps"])
    assert res["matmul_peak_gflops"] > 0 and len(res["load_avg"]) == 2
    assert set(torch_row["profile_ms"]) == {"backbone", "neck", "head", "nmode", "postprocess"}
    assert "profile_ms" not in ort_row
    assert set(relative_to(res, SMALL)) == {SMALL, f"{SMALL} (onnxruntime)"}


def test_int8_export_and_timing_on_a_tiny_detector(tmp_path):
    # A zoo model takes ~10 s to calibrate; a tiny GFL detector with nmODE² in the head runs
    # the same code path (export, static QDQ quantization, session + numpy post-process).
    from meddet.benchmark import _export_onnx, _time_onnx
    from meddet.models import FPN, GFLDetector, GFLHead

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, stride=s, padding=1)
                                       for i, s in enumerate((8, 2, 2)))

        def forward(self, x):
            outs = []
            for conv in self.convs:
                x = conv(x)
                outs.append(x)
            return outs

    torch.manual_seed(0)
    model = GFLDetector(name="tiny", num_classes=2, backbone=Tiny(), neck=FPN([8, 8, 8], 16),
                        head=GFLHead(num_classes=2, in_channels=16, feat_channels=16,
                                     stacked_convs=1, norm_groups=4, nmode=True)).eval()
    path = _export_onnx(model, 64, tmp_path, int8=True)
    assert path.name == "model_int8.onnx" and path.is_file()
    times = _time_onnx(path, model, torch.randn(2, 3, 64, 64), threads=1, warmup=0, iters=1)
    assert len(times) == 1 and times[0] > 0


def test_no_optimize_times_the_model_as_built():
    res = benchmark_models([SMALL], img_size=64, warmup=0, iters=1, threads=1, optimize=False,
                           peak=False)
    (row,) = res["models"]
    assert row["runtime"] == "torch" and not row["optimized"] and row["fps"] > 0
    assert res["matmul_peak_gflops"] is None


def test_cli_bad_runtime_exits_2(capsys):
    assert main(["bench", "--models", SMALL, "--runtime", "tensorrt", "--img-size", "64"]) == 2
    assert "unknown runtime 'tensorrt'" in capsys.readouterr().err


def test_timing_rounds_interleave_the_rows():
    from meddet.benchmark import _time_rounds

    order = []
    calls = [lambda: order.append("a"), lambda: order.append("b"), lambda: order.append("c")]
    times = _time_rounds(calls, warmup=1, iters=2)
    # warm-up of each, then round after round: every row once per round
    assert order == ["a", "b", "c", "a", "b", "c", "a", "b", "c"]
    assert [len(t) for t in times] == [2, 2, 2] and all(x >= 0 for t in times for x in t)
