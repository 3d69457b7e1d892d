"""`meddet bench` and :mod:`meddet.benchmark`: counts, the FLOP convention, timing statistics,
JSON, bad input."""

import json
import statistics
import sys
import time

import pytest
import torch
from torch import nn

from meddet.benchmark import (
    PeakMemory,
    benchmark_models,
    count_gflops,
    count_params,
    relative_to,
    round_ratios,
    time_rounds,
    timing_stats,
)
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
    assert res["threads"] == 1 and res["iters"] == 2 and res["min_time"] == 0.0
    assert row["fps"] > 0 and row["latency_ms_mean"] > 0 and row["latency_ms_std"] >= 0
    # Exactly --iters rounds without --min-time; FPS at the median of the raw call times.
    assert row["rounds"] == len(row["times_s"]) == 2
    assert row["latency_ms_median"] == pytest.approx(1000 * statistics.median(row["times_s"]))
    assert row["fps"] == pytest.approx(1000 / row["latency_ms_median"], rel=1e-9)
    assert row["latency_ms_min"] == pytest.approx(1000 * min(row["times_s"]))
    if sys.platform.startswith("linux"):
        assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0


def test_relative_to():
    result = {"models": [
        {"name": "a", "params_m": 40.0, "gflops": 50.0, "fps": 2.0},
        {"name": "b", "params_m": 10.0, "gflops": 30.0, "fps": 5.0},
    ]}
    r = relative_to(result, "a")
    assert r["b"] == pytest.approx({"speedup": 2.5, "speedup_min": None, "speedup_max": None,
                                    "params_reduction_pct": 75.0, "flops_reduction_pct": 40.0})
    assert r["a"]["speedup"] == 1.0


def test_timing_stats_by_hand():
    # Batch 2: per-image latencies 100, 50, 200, 150 ms; even count -> median = (100+150)/2.
    s = timing_stats([0.2, 0.1, 0.4, 0.3], batch_size=2)
    assert s["latency_ms_median"] == pytest.approx(125.0)
    assert s["latency_ms_min"] == pytest.approx(50.0)
    assert s["latency_ms_mean"] == pytest.approx(125.0)
    # Sample std: sqrt((25² + 75² + 75² + 25²) / 3)
    assert s["latency_ms_std"] == pytest.approx((12500 / 3) ** 0.5)
    assert s["fps"] == pytest.approx(8.0)  # 1000 / 125 ms
    assert s["rounds"] == 4 and s["times_s"] == [0.2, 0.1, 0.4, 0.3]
    # Odd count: the middle value, not the mean (which 0.9 s would drag to 400 ms).
    s = timing_stats([0.3, 0.1, 0.2, 0.9, 0.1], batch_size=1)
    assert s["latency_ms_median"] == pytest.approx(200.0) and s["fps"] == pytest.approx(5.0)
    assert s["latency_ms_mean"] == pytest.approx(320.0)


def _row(name, times, params=10.0, gflops=10.0):
    return {"name": name, "params_m": params, "gflops": gflops, **timing_stats(times)}


def test_speedup_is_the_ratio_of_medians_with_its_range_over_rounds():
    result = {"models": [_row("ref", [0.4, 0.5, 0.6]), _row("x", [0.2, 0.1, 0.3])]}
    r = relative_to(result, "ref")
    # Medians 500 ms and 200 ms; per-round ratios 0.4/0.2, 0.5/0.1, 0.6/0.3 = 2, 5, 2.
    assert r["x"]["speedup"] == pytest.approx(2.5)
    assert (r["x"]["speedup_min"], r["x"]["speedup_max"]) == pytest.approx((2.0, 5.0))
    assert r["ref"] == pytest.approx({"speedup": 1.0, "speedup_min": 1.0, "speedup_max": 1.0,
                                      "params_reduction_pct": 0.0, "flops_reduction_pct": 0.0})
    # Rows timed in different numbers of rounds (--min-time): only the common rounds count.
    assert round_ratios([1.0, 1.0], [0.5, 0.25, 0.1, 0.1]) == [2.0, 4.0]


def test_one_disturbed_round_does_not_move_the_median_ratio():
    ref = [1.0] * 5
    quiet = [0.5] * 5
    disturbed = [0.5, 0.5, 20.0, 0.5, 0.5]  # another process took the CPU for one call
    for times in (quiet, disturbed):
        r = relative_to({"models": [_row("ref", ref), _row("x", times)]}, "ref")
        assert r["x"]["speedup"] == pytest.approx(2.0)
    assert (r["x"]["speedup_min"], r["x"]["speedup_max"]) == pytest.approx((0.05, 2.0))

    # The former definition, images / total time, turns the same 2x into 0.23x.
    def total_time_ratio(times):
        return (len(times) / sum(times)) / (len(ref) / sum(ref))

    assert total_time_ratio(quiet) == pytest.approx(2.0)
    assert total_time_ratio(disturbed) == pytest.approx(5 / 22)


def test_min_time_times_each_call_until_it_has_spent_that_long():
    order = []

    def sleeper(tag, seconds):
        def call():
            order.append(tag)
            time.sleep(seconds)
        return call

    fast, slow = sleeper("f", 0.005), sleeper("s", 0.03)
    times = time_rounds([fast, slow], warmup=0, iters=1)
    assert [len(t) for t in times] == [1, 1]  # no min_time: exactly iters rounds
    order.clear()
    t_fast, t_slow = time_rounds([fast, slow], warmup=0, iters=2, min_time=0.06)
    for t in (t_fast, t_slow):
        # at least iters calls and min_time seconds, and not a round more than needed
        assert len(t) >= 2 and sum(t) >= 0.06
        assert len(t) == 2 or sum(t[:-1]) < 0.06
        assert all(x >= 0.005 for x in t)
    assert len(t_fast) > len(t_slow)  # the fast call got the extra rounds
    # Interleaved while both are timed, then the fast one alone.
    n = len(t_slow)
    assert order == ["f", "s"] * n + ["f"] * (len(t_fast) - n)


def test_peak_memory_sees_an_allocation():
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux-only")
    probe = PeakMemory(torch.device("cpu"))
    probe.start()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    peak = probe.peak_mb()
    del x
    assert peak is not None and 60 <= peak < 200


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
        (["--models", SMALL, "--min-time", "-1"], "--min-time"),
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
    from meddet.benchmark.onnx import export_onnx, onnx_call
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
    path = export_onnx(model, 64, tmp_path, int8=True)
    assert path.name == "model_int8.onnx" and path.is_file()
    call = onnx_call(path, model, torch.randn(2, 3, 64, 64), threads=1)
    (times,) = time_rounds([call], warmup=0, iters=1)
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
    order = []
    calls = [lambda: order.append("a"), lambda: order.append("b"), lambda: order.append("c")]
    times = time_rounds(calls, warmup=1, iters=2)
    # warm-up of each, then round after round: every row once per round
    assert order == ["a", "b", "c", "a", "b", "c", "a", "b", "c"]
    assert [len(t) for t in times] == [2, 2, 2] and all(x >= 0 for t in times for x in t)


def test_cli_min_time_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", f"{SMALL},gfl_shufflenet", "--img-size", "64", "--iters",
                 "1", "--warmup", "0", "--threads", "1", "--min-time", "0.2", "--ref", SMALL,
                 "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "min ms" in text and "speed-up (range)" in text
    assert "--min-time 0.2 s" in text
    data = json.loads(out.read_text())
    assert data["min_time"] == 0.2 and data["iters"] == 1
    ref_row, row = data["models"]
    for r in (ref_row, row):
        assert sum(r["times_s"]) >= 0.2 and r["rounds"] == len(r["times_s"]) >= 1
    assert ref_row["speedup"] == 1.0 and ref_row["speedup_min"] == ref_row["speedup_max"] == 1.0
    # The JSON's raw round times reproduce the ratio and its range.
    med = statistics.median
    assert row["speedup"] == pytest.approx(med(ref_row["times_s"]) / med(row["times_s"]))
    per_round = [a / b for a, b in zip(ref_row["times_s"], row["times_s"])]
    assert (row["speedup_min"], row["speedup_max"]) == pytest.approx((min(per_round),
                                                                      max(per_round)))


def test_build_gfl_with_a_custom_arch():
    from meddet.errors import MedDetError
    from meddet.models.zoo import build_gfl

    m = build_gfl(2, name="v", backbone_name="mobilenet_v2", default_nmode="none",
                  arch={"fpn_channels": 64, "head_channels": 32, "stacked_convs": 1})
    assert m.name == "v" and m.neck.out_channels == 64
    assert m.head.gfl_cls.in_channels == 32 and m.head.in_channels == 64
    with pytest.raises(MedDetError, match="unknown arch key"):
        build_gfl(2, name="v", backbone_name="mobilenet_v2", default_nmode="none",
                  arch={"fpn_chanels": 64})
