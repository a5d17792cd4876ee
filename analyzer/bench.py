"""Engine benchmarks: backbone and head throughput, FLOPs, peak, and the naive baseline.

Everything here is measured, side by side in one run, on synthetic inputs (speed does not
depend on the weights). Times are medians of repeated runs after warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from analyzer.compiled import MODES, CompiledBackbone, unavailable
from analyzer.engine import Engine
from analyzer.errors import DeviceError
from analyzer.model import FEATURES, VideoClassifier, random_model

WINDOW = 150
HALF_PEAK = {"float16": "bfloat16"}  # TensorRT's fp16 rows: the tensor cores' bf16 rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(engine: Engine) -> dict[str, float]:
    """Counted FLOPs: backbone per frame (flop counter), head per window (by hand)."""
    model = engine.model
    x = torch.zeros(1, 3, engine.input_size, engine.input_size, device=engine.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.features(x)
    backbone = float(counter.get_total_flops())
    # The flop counter does not see nn.LSTM. One step: 4 gates, each a (2048 x 2048)
    # matrix-vector product for the input and one for the hidden state: 2 * 4H * (I + H).
    hidden = model.lstm.hidden_size
    step = 2.0 * 4 * hidden * (FEATURES + hidden)
    steps = 1 if model.legacy else WINDOW
    return {
        "backbone_flops_per_frame": backbone,
        "lstm_flops_per_step": step,
        "head_flops_per_window": step * steps + 2.0 * hidden * model.classifier.out_features,
    }


def matmul_peak(device: torch.device, quick: bool) -> dict[str, float]:
    """The device's measured dense matmul rate (fp32 on CPU, bf16 and fp32 on CUDA)."""
    out = {}
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    n = 8192 if device.type == "cuda" else (1024 if quick else 2048)
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm(a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return a @ b

        sec = timed(mm, device, repeats=3 if quick else 5)
        out[str(dtype).removeprefix("torch.")] = 2.0 * n**3 / sec
    return out


@dataclass
class EngineRow:
    stage: str
    batch: int
    dtype: str
    channels_last: bool
    items_per_s: float
    ms_per_item: float
    tflops: float
    mode: str = "eager"  # or a DFM_COMPILE mode: inductor, cudagraphs, ..., tensorrt
    compile_s: float = 0.0  # compiling (and recording) every batch size of the mode
    vs_eager: float | None = None  # items/s over the served eager backbone's, same batch

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def engine_bench(
    device: str, *, batches: list[int], quick: bool, compiled: list[int] | None = None
) -> dict[str, Any]:
    """Backbone crops/s and head windows/s by batch size, dtype and memory format; at the
    batch sizes in ``compiled``, the backbone under every DFM_COMPILE mode that can run
    here too, side by side with the eager one (``vs_eager``; ``compile_skipped``: why a
    mode was not measured)."""
    loaded = random_model()
    engine = Engine(loaded, device)
    dev = engine.device
    counted = flops(engine)
    peak = matmul_peak(dev, quick)
    rng = np.random.default_rng(0)
    repeats = 2 if quick else 3
    rows: list[EngineRow] = []
    variants = [("float32", False), ("float32", True)]
    if dev.type == "cuda":
        variants = [("float32", False), ("bfloat16", False), ("bfloat16", True)]

    model = engine.model
    for dtype_name, channels_last in variants:
        dtype = getattr(torch, dtype_name)
        model = model.to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        for b in batches:
            x = torch.randn(b, 3, 112, 112, device=dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def run(
                x: torch.Tensor = x, dtype: torch.dtype = dtype, model: VideoClassifier = model
            ) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32),
                ):
                    model.features(x)

            sec = timed(run, dev, repeats=repeats)
            rows.append(
                _row(
                    "backbone",
                    b,
                    dtype_name,
                    channels_last,
                    b / sec,
                    counted["backbone_flops_per_frame"],
                )
            )
    skipped: dict[str, str] = {}
    if compiled:
        more, skipped = compiled_rows(
            engine, compiled, counted["backbone_flops_per_frame"], repeats
        )
        rows += more
        versus_eager(rows, engine.cuda)
    # The engine path as the service calls it: uint8 crops in, numpy features out.
    engine.model = engine.model.to(
        memory_format=torch.channels_last if engine.cuda else torch.contiguous_format
    )
    engine_rows = []
    for b in batches:
        crops = rng.integers(0, 256, (b, 112, 112, 3), dtype=np.uint8)

        def run_engine(c: np.ndarray = crops) -> None:
            engine.backbone(c)

        sec = timed(run_engine, dev, repeats=repeats)
        engine_rows.append({"batch": b, "crops_per_s": b / sec})
    for b in [w for w in batches if w <= 256]:  # the batcher's head batch goes to 256
        windows = [rng.standard_normal((WINDOW, FEATURES)).astype(np.float32) for _ in range(b)]

        def run_head(w: list[np.ndarray] = windows) -> None:
            engine.head(w)

        sec = timed(run_head, dev, repeats=repeats)
        rows.append(
            _row(
                "head",
                b,
                "bfloat16" if engine.cuda else "float32",
                False,
                b / sec,
                counted["head_flops_per_window"],
            )
        )

    best_raw = max(
        r.items_per_s
        for r in rows
        if r.stage == "backbone"
        and r.mode == "eager"
        and r.dtype == ("bfloat16" if engine.cuda else "float32")
    )
    best_engine = max(r["crops_per_s"] for r in engine_rows)
    return {
        "device": _device_name(dev),
        "flops": counted,
        "matmul_peak_flops": peak,
        "rows": [r.as_dict() for r in rows],
        "compile_skipped": skipped,
        "engine_backbone": engine_rows,
        "engine_vs_raw_backbone": best_engine / best_raw,
        "backbone_fraction_of_peak": max(
            r.tflops * 1e12 / peak.get(HALF_PEAK.get(r.dtype, r.dtype), peak["float32"])
            for r in rows
            if r.stage == "backbone"
        ),
    }


def compiled_rows(
    engine: Engine, batches: list[int], flop: float, repeats: int
) -> tuple[list[EngineRow], dict[str, str]]:
    """The backbone as the service runs it under each DFM_COMPILE mode that can run here
    (:class:`analyzer.compiled.CompiledBackbone`, compiled for exactly ``batches``), and
    why each other mode was not measured."""
    dev = engine.device
    engine.model.to(memory_format=torch.channels_last if engine.cuda else torch.contiguous_format)
    rows: list[EngineRow] = []
    skipped: dict[str, str] = {}
    for mode in MODES:
        if mode == "off":
            continue
        if why := unavailable(mode, dev):
            skipped[mode] = why
            continue
        torch._dynamo.reset()  # each mode compiles afresh (inductor's cache still serves)
        backbone = CompiledBackbone(
            engine.model, dev, mode, sizes=batches, input_size=engine.input_size
        )
        try:
            backbone.warm()
        except DeviceError as exc:  # a compiler's failure is a finding, not the end of the run
            skipped[mode] = str(exc)
            continue
        dtype = "float16" if mode == "tensorrt" else "bfloat16" if engine.cuda else "float32"
        for b in batches:
            x = torch.randn(b, 3, engine.input_size, engine.input_size, device=dev)
            x = x.contiguous(memory_format=backbone.format)

            def run(x: torch.Tensor = x, backbone: CompiledBackbone = backbone) -> None:
                with torch.inference_mode():
                    backbone(x)

            sec = timed(run, dev, repeats=repeats)
            row = _row("backbone", b, dtype, engine.cuda, b / sec, flop)
            row.mode, row.compile_s = mode, backbone.compile_s
            rows.append(row)
        del backbone
        if engine.cuda:
            torch.cuda.empty_cache()
    return rows, skipped


def versus_eager(rows: list[EngineRow], cuda: bool) -> None:
    """Each compiled row's speed over the eager backbone's as the service runs it (bf16
    and channels_last on CUDA, fp32 on the CPU) at the same batch: ``vs_eager``."""
    served = "bfloat16" if cuda else "float32"
    eager = {
        r.batch: r.items_per_s
        for r in rows
        if r.stage == "backbone" and r.mode == "eager" and r.dtype == served
        and r.channels_last == cuda
    }  # fmt: skip
    for r in rows:
        if r.mode != "eager" and r.batch in eager:
            r.vs_eager = r.items_per_s / eager[r.batch]


def _row(stage: str, batch: int, dtype: str, cl: bool, per_s: float, flop: float) -> EngineRow:
    return EngineRow(stage, batch, dtype, cl, per_s, 1000.0 / per_s, per_s * flop / 1e12)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def baseline_bench(device: str, *, hops: list[int], streams: int, quick: bool) -> dict[str, Any]:
    """Naive serving (every window runs 150 frames through the whole model) against ours
    (each frame through the backbone once, the head over cached features), in steady state,
    on the same synthetic streams, one face each.

    Ours: per verdict, the backbone sees ``hop`` new frames of every stream (one batch
    across streams) and the head runs once over all streams' windows. Naive: per verdict,
    each stream's 150-frame window goes through the whole model.
    """
    engine = Engine(random_model(), device)
    dev = engine.device
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (WINDOW, 112, 112, 3), dtype=np.uint8)
    feats = engine.backbone(frames)
    results = []
    for hop in hops:
        rounds = 1 if quick else 2
        new = np.concatenate([frames[:hop]] * streams)

        def ours(new: np.ndarray = new) -> None:
            engine.backbone(new)
            engine.head([feats] * streams)

        def naive() -> None:
            for _ in range(streams):
                engine.score_clips(frames[None])

        t_ours = timed(ours, dev, repeats=rounds + 1)
        t_naive = timed(naive, dev, repeats=rounds, warmup=0)

        # Latency of one verdict once its last frame is in: ours runs the backbone on that
        # frame and the head; naive runs the whole window.
        def last_frame_to_verdict() -> None:
            engine.backbone(frames[:1])
            engine.head([feats])

        lat_ours = timed(last_frame_to_verdict, dev, repeats=3)
        lat_naive = timed(lambda: engine.score_clips(frames[None]), dev, repeats=1, warmup=0)
        results.append(
            {
                "hop": hop,
                "streams": streams,
                "ours_windows_per_s": streams / t_ours,
                "naive_windows_per_s": streams / t_naive,
                "ratio_ours_over_naive": t_naive / t_ours,
                "ours_backbone_frames_per_verdict": hop,
                "naive_backbone_frames_per_verdict": WINDOW,
                "ours_verdict_latency_ms": lat_ours * 1000,
                "naive_verdict_latency_ms": lat_naive * 1000,
            }
        )
    return {"device": _device_name(dev), "window": WINDOW, "results": results}
