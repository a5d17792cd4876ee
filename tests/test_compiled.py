"""The backbone compiled at start-up (DFM_COMPILE, issue 21 item 4): the same features
as eager at every batch size, with no compile after start-up, and one-line refusals.

Only inductor can run here (the CPU); CUDA graphs and TensorRT need a GPU and are
measured by ``scripts/gpu_check.sh``. Every compile here is of batch 4 (DFM_MAX_BATCH=4),
so the later ones find the first one's kernels in inductor's cache (tests/conftest.py).
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

import analyzer.compiled
from analyzer.compiled import MODES, CompiledBackbone, buckets, unavailable
from analyzer.engine import Engine
from analyzer.errors import DeviceError
from analyzer.model import random_model
from streamer.config import CompileMode
from tests.servers import metric_in, metrics_after_two_verdicts_with_faces

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # named only: nothing here runs on it


def test_the_setting_offers_every_compile_mode():
    assert get_args(CompileMode) == MODES


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert buckets(64) == [8, 16, 32, 64]
    assert buckets(100) == [8, 16, 32, 64, 100]
    assert buckets(8) == [8] and buckets(4) == [4] and buckets(1) == [1]
    assert len(buckets(1024)) == 8  # within dynamo's default recompile limit


def test_inductor_gives_eager_features_at_every_batch_size_without_recompiling():
    """Batches below, at and above the largest: padded up to the bucket or cut in slices;
    a call with a shape it was not compiled for would recompile, which fails here."""
    eager = Engine(random_model(), "cpu")
    compiled = Engine(random_model(), "cpu", compile="inductor", max_batch=4)
    compiled.warmup(window=4)
    assert compiled.compiled is not None and compiled.compiled.compile_s > 0
    rng = np.random.default_rng(3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (1, 3, 4, 5, 9):
            crops = rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
            got, want = compiled.backbone(crops), eager.backbone(crops)
            assert got.shape == want.shape == (n, 2048)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_mode_that_cannot_run_says_why(monkeypatch):
    assert unavailable("off", CPU) is None
    assert unavailable("inductor", CPU) is None  # this machine has a C++ compiler
    for mode in ("cudagraphs", "inductor-cudagraphs", "tensorrt"):
        assert unavailable(mode, CPU) == f"{mode} needs a CUDA device and the engine runs on cpu"
    assert unavailable("tensorrt", CUDA) == (
        "torch_tensorrt is not installed (pip install torch-tensorrt)"
    )
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    assert "needs a C++ compiler" in (unavailable("inductor", CPU) or "")
    assert (unavailable("inductor", CUDA) or "").startswith("inductor on CUDA needs")
    assert unavailable("cudagraphs", CUDA) is None  # eager, recorded: no compiler
    with pytest.raises(ValueError, match="compile mode"):
        CompiledBackbone(random_model().model, CPU, "off", sizes=[4], input_size=112)


def test_a_failing_compiler_stops_start_up_with_one_line(monkeypatch):
    def broken(fn, **kwargs):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            raise RuntimeError("C++ compile error\n  long compiler output\n  more of it")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    engine = Engine(random_model(), "cpu", compile="inductor", max_batch=4)
    with pytest.raises(DeviceError) as caught:
        engine.warmup(window=4)
    assert str(caught.value) == (
        "compiling the backbone (inductor) failed: RuntimeError: C++ compile error; "
        "run it eager (DFM_COMPILE=off)"
    )


async def test_the_service_serves_through_the_compiled_backbone(fake_clip, monkeypatch):
    """DFM_COMPILE=inductor: a stream's verdicts name its face, its crops having gone
    through the compiled backbone, with no engine error."""
    calls: list[int] = []
    real = CompiledBackbone.__call__

    def counting(self, x):  # type: ignore[no-untyped-def]
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(analyzer.compiled.CompiledBackbone, "__call__", counting)
    settings = {"DFM_COMPILE": "inductor", "DFM_MAX_BATCH": "4"}
    text = await metrics_after_two_verdicts_with_faces(settings, fake_clip)
    # Two verdicts with a face, 20-frame windows 10 frames apart: 30 crops' features at least.
    assert sum(calls) >= 2 + 30, calls  # the warm-up's 2, then the stream's
    assert max(calls) <= 4  # DFM_MAX_BATCH
    assert not metric_in(text, "deepfake_engine_errors_total", stage="backbone")


def test_the_benchmark_puts_every_mode_beside_eager():
    """bench --parts engine --compile 4: inductor's row with its speed over eager and its
    compile time, and each mode this machine cannot run named with the reason."""
    from analyzer.bench import engine_bench
    from streamer.bench import format_report

    result = engine_bench("cpu", batches=[4], quick=True, compiled=[4])
    (row,) = [r for r in result["rows"] if r["mode"] != "eager"]
    assert (row["mode"], row["batch"], row["dtype"]) == ("inductor", 4, "float32")
    assert row["vs_eager"] > 0 and row["compile_s"] > 0
    report = format_report({"engine": result})
    (line,) = [ln for ln in report.splitlines() if " inductor " in ln]
    for figure in (
        f"{row['items_per_s']:.1f}",
        f"{row['vs_eager']:.2f}x",
        f"{row['compile_s']:.1f}",
    ):
        assert figure in line, (figure, line)
    for mode in ("cudagraphs", "inductor-cudagraphs", "tensorrt"):
        reason = f"{mode} needs a CUDA device and the engine runs on cpu"
        assert f"DFM_COMPILE={mode}: not measured: {reason}" in report
