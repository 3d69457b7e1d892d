"""Model cost: parameters, GFLOPs, inference speed and peak memory (paper Table II).

The package, one job per module:

* :mod:`~meddet.benchmark.measure`: parameter and FLOP counts, one timed call, the
  interleaved timing rounds;
* :mod:`~meddet.benchmark.report`: latency statistics, FPS and ratios from the round times;
* :mod:`~meddet.benchmark.memory`: peak-memory probes (:class:`PeakRss`, :class:`PeakMemory`);
* :mod:`~meddet.benchmark.onnx`: the onnxruntime rows (export, int8, session + post-process);
* :mod:`~meddet.benchmark.profile`: per-stage latency and the matmul peak;
* :mod:`~meddet.benchmark.run`: :func:`benchmark_models`, which puts these together.

What is measured, exactly:

* **Parameters**: every parameter of the detector (backbone + FPN + head), trainable or frozen,
  in millions. Post-processing and the assigner have none.
* **GFLOPs**: fvcore's :class:`~fvcore.nn.FlopCountAnalysis` of the network forward
  (``forward_raw``: backbone, FPN, head) on one ``1 x 3 x img_size x img_size`` image. fvcore
  counts one multiply-accumulate as one FLOP, as the paper (via mmcv) does. Convolutions, norms
  and upsampling are counted; elementwise ops (activations, additions, the nmODE² sin/cos
  evaluations: about 20 per element of the head towers' output, < 0.2 % of the total) and
  post-processing are not.
* **Speed**: eval-mode ``forward(images)`` including post-processing (decode, score threshold,
  NMS), under ``torch.inference_mode``, after ``warmup`` untimed calls, on random images,
  timed in rounds **interleaved across models and runtimes**: each round times every row once,
  so load that comes and goes on a shared machine affects all rows alike. Each row gets at
  least ``iters`` rounds and, with ``min_time``, further rounds until that many seconds were
  spent on it. Latency is per image (call time / batch size); the **median** is the reported
  speed (FPS = 1000 / median ms), the **minimum** the least disturbed figure; mean and
  standard deviation are kept too, and the raw call times (``times_s``). Ratios between
  models are ratios of medians; :func:`relative_to` also gives the range of the per-round
  ratio. With untrained weights few locations pass the 0.05 score threshold, so NMS is cheaper
  than on a trained model.
* **Runtimes** (``runtimes``): ``torch`` is eager PyTorch; by default on the
  :func:`meddet.models.optimize_for_inference` copy (BatchNorm folded into the convs, nmODE²
  through its interpolated solution table; detections equal the plain model's to ~1e-5),
  ``optimize=False`` times the model as built. ``onnxruntime`` exports the model with
  :mod:`meddet.export` (ONNX, raw outputs) to a temporary directory and times
  ``session.run`` plus :func:`meddet.deploy.postprocess` (numpy), so its FPS includes
  post-processing too; ``intra_op_num_threads`` = ``threads``. ``onnxruntime-int8`` first
  quantizes that file statically (QDQ, convolutions only: per-channel int8 weights, uint8
  activations calibrated on a few synthetic images; nmODE² stays float32); its accuracy is
  not measured here (use ``meddet eval``).
* **GFLOP/s**: GFLOPs x FPS, next to the machine's matmul peak measured with the same
  thread count (best of a few ``torch.mm`` of 1024 x 1024 float32 matrices, n³ multiply-adds
  each: the same 1 MAC = 1 FLOP convention as the GFLOPs column).
* **Profile** (``profile=True``, torch runtime): per-stage latency of backbone, FPN, head
  (without nmODE²), nmODE² (every block wherever it sits) and post-processing, timed stage by
  stage on the same model and input.
* **Peak memory**: the model is built afresh for this (after the FLOP count, whose tracer
  garbage must not count). On CUDA, ``torch.cuda.max_memory_allocated`` during build and
  warm-up. On Linux CPU, the growth of the process's resident-set high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident size before the model
  was built: weights, activations and allocator overhead. Elsewhere ``None``.
"""

from __future__ import annotations

from meddet import paper
from meddet.benchmark.measure import FLOP_CONVENTION, count_gflops, count_params, time_rounds
from meddet.benchmark.memory import PeakMemory, PeakRss
from meddet.benchmark.profile import PROFILE_STAGES, matmul_peak_gflops, profile_stages
from meddet.benchmark.report import relative_to, round_ratios, timing_stats
from meddet.benchmark.run import RUNTIMES, benchmark_models
from meddet.device import resolve_device

__all__ = [
    "FLOP_CONVENTION",
    "PROFILE_STAGES",
    "RUNTIMES",
    "TABLE2_PAPER",
    "PeakMemory",
    "PeakRss",
    "benchmark_models",
    "count_gflops",
    "count_params",
    "matmul_peak_gflops",
    "profile_stages",
    "relative_to",
    "resolve_device",
    "round_ratios",
    "time_rounds",
    "timing_stats",
]

# The paper's Table II (parameters in M, GFLOPs at 512 px), under the name callers import.
TABLE2_PAPER = paper.TABLE2
