"""The backbone compiled ahead of serving: torch.compile, CUDA graphs or TensorRT.

``DFM_COMPILE`` picks the mode; ``off`` (eager) is the default until a GPU has measured
which mode serves fastest (``bench --parts engine --compile``). Every mode but TensorRT
serves fixed batch sizes, the *buckets* (:func:`buckets`): a batch is padded up to the
next bucket and one larger than ``DFM_MAX_BATCH`` runs in slices, so nothing compiles or
records again after :meth:`CompiledBackbone.warm`, which start-up runs once per bucket.

- ``inductor``: ``torch.compile(dynamic=False)``, one graph per bucket (CPU or CUDA; it
  needs a C++ compiler on the CPU, Triton and a C compiler on CUDA).
- ``cudagraphs``: the eager backbone recorded as one CUDA graph per bucket, all in one
  memory pool (graphs replay one at a time); inputs are copied into the graph's own.
- ``inductor-cudagraphs``: the inductor graphs, recorded the same way.
- ``tensorrt``: ``torch_tensorrt.compile`` (dynamo IR) of an FP16 copy of the backbone,
  one engine for every batch from 1 to the largest (no padding).

The other modes run the eager backbone's bf16 autocast on CUDA (fp32 on the CPU), with
autocast's cast cache off: a recorded graph must cast the weights itself rather
than read a cast that is freed when the autocast region ends (the CUDA graphs notes
of PyTorch's documentation say the same).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from analyzer.errors import DeviceError
from analyzer.model import VideoClassifier

log = logging.getLogger(__name__)

CompileMode = Literal["off", "inductor", "cudagraphs", "inductor-cudagraphs", "tensorrt"]
MODES: tuple[CompileMode, ...] = get_args(CompileMode)
SMALLEST = 8  # the smallest bucket: padding a batch of 1 to 8 costs less than a graph more


def buckets(largest: int) -> list[int]:
    """The batch sizes compiled for a largest batch: powers of two from 8 below it, then
    the largest itself (64: 8, 16, 32, 64; 100: 8, 16, 32, 64, 100; 4: 4)."""
    sizes = []
    size = SMALLEST
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, largest]


def _which(names: tuple[str, ...], variable: str) -> str | None:
    chosen = os.environ.get(variable)
    if chosen:
        return shutil.which(chosen)
    return next((path for name in names if (path := shutil.which(name))), None)


def unavailable(mode: str, device: torch.device) -> str | None:
    """Why ``mode`` cannot run on ``device`` here, in a few words; None when it can."""
    if mode == "off":
        return None
    cuda = device.type == "cuda"
    if mode != "inductor" and not cuda:
        return f"{mode} needs a CUDA device and the engine runs on {device.type}"
    if mode == "tensorrt":
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "torch_tensorrt is not installed (pip install torch-tensorrt)"
        return None
    if mode in ("inductor", "inductor-cudagraphs"):
        if not cuda and _which(("c++", "g++", "clang++"), "CXX") is None:
            return "inductor on the CPU needs a C++ compiler (c++, g++ or $CXX) on PATH"
        if cuda and importlib.util.find_spec("triton") is None:
            return "inductor on CUDA needs Triton (pip install triton)"
        if cuda and _which(("cc", "gcc", "clang"), "CC") is None:
            return "inductor on CUDA needs a C compiler (cc, gcc or $CC) on PATH for Triton"
    return None


class _Features(nn.Module):
    """``model.features`` as a module of its own (what TensorRT compiles)."""

    def __init__(self, model: VideoClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)


class CompiledBackbone:
    """``model.features`` compiled by ``mode`` for the batch sizes ``sizes`` (the
    engine's: :func:`buckets`; the bench's: the sizes it measures); call it with the
    engine's normalised input, (N, 3, H, W) float, inside ``torch.inference_mode``."""

    def __init__(
        self,
        model: VideoClassifier,
        device: torch.device,
        mode: CompileMode,
        *,
        sizes: list[int],
        input_size: int,
    ) -> None:
        if mode == "off":
            raise ValueError("CompiledBackbone needs a compile mode, not off")
        self.model = model
        self.device = device
        self.mode = mode
        self.sizes = sorted(sizes)
        self.largest = self.sizes[-1]
        self.input_size = input_size
        self.cuda = device.type == "cuda"
        self.format = torch.channels_last if self.cuda else torch.contiguous_format
        self.compile_s = 0.0
        self._run: Callable[[Tensor], Tensor] | None = None
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self._pool: Any = None  # the graphs' one memory pool

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cuda, cache_enabled=False
        )

    def _input(self, batch: int) -> Tensor:
        size = self.input_size
        shape = (batch, 3, size, size)
        return torch.zeros(shape, device=self.device).contiguous(memory_format=self.format)

    def warm(self) -> None:
        """Compile (and record) every bucket; start-up calls this once, before serving. A
        compiler's failure is a one-line :class:`DeviceError` naming the way out."""
        start = time.perf_counter()
        try:
            self._compile()
        except Exception as exc:  # any compiler's error, said in one line
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise DeviceError(
                f"compiling the backbone ({self.mode}) failed: "
                f"{type(exc).__name__}: {first}; run it eager (DFM_COMPILE=off)"
            ) from None
        self.compile_s = time.perf_counter() - start
        log.info(
            "engine: backbone compiled (%s) for batches %s in %.1f s",
            self.mode,
            ",".join(map(str, self.sizes)) if self.mode != "tensorrt" else f"1-{self.largest}",
            self.compile_s,
        )

    def _compile(self) -> None:
        if self.mode == "tensorrt":
            with torch.no_grad():  # torch.export, under TensorRT, wants no inference tensors
                self._run = self._tensorrt()
            with torch.inference_mode():
                self._run(self._input(1))
        else:
            features = self.model.features
            if self.mode in ("inductor", "inductor-cudagraphs"):
                features = torch.compile(features, dynamic=False)
            self._run = features
            # One graph per bucket; the default limit (8) is as many as buckets(1024) has.
            with (
                torch._dynamo.config.patch(recompile_limit=len(self.sizes) + 8),
                torch.inference_mode(),
            ):
                for batch in sorted(self.sizes, reverse=True):  # the largest pool first
                    if self.mode in ("cudagraphs", "inductor-cudagraphs"):
                        self._record(batch)
                    else:
                        with self._autocast():
                            features(self._input(batch))
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _record(self, batch: int) -> None:
        assert self._run is not None
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        static = self._input(batch)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self._autocast():  # compile and let cuDNN pick first
            for _ in range(3):
                self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), self._autocast():
            out = self._run(static)
        self._graphs[batch] = (graph, static, out)

    def _tensorrt(self) -> Callable[[Tensor], Tensor]:
        import torch_tensorrt  # type: ignore[import-not-found]  # optional, GPU images only

        size = self.input_size
        spec = torch_tensorrt.Input(
            min_shape=(1, 3, size, size),
            opt_shape=(self.largest, 3, size, size),
            max_shape=(self.largest, 3, size, size),
            dtype=torch.float16,
        )
        # FP16 said by the types (a half copy of the backbone, half inputs): from
        # torch-tensorrt 2.10 on, enabled_precisions and explicit typing refuse each other.
        half = _Features(copy.deepcopy(self.model)).eval().half()
        module = torch_tensorrt.compile(half, ir="dynamo", inputs=[spec], use_explicit_typing=True)
        return lambda x: module(x.half())

    def __call__(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised input -> (N, F) features, any N."""
        if self._run is None:
            raise RuntimeError("CompiledBackbone.warm() has not run")
        n = len(x)
        if n > self.largest:
            step = self.largest
            return torch.cat([self(x[i : i + step]) for i in range(0, n, step)])
        if self.mode == "tensorrt":
            return self._run(x.contiguous(memory_format=self.format))
        batch = next(size for size in self.sizes if size >= n)
        if self._graphs:
            graph, static, out = self._graphs[batch]
            static[:n].copy_(x)
            graph.replay()
            return out[:n].clone()  # the next replay writes over ``out``
        padded = self._input(batch)
        padded[:n] = x
        with self._autocast():
            return self._run(padded)[:n]
