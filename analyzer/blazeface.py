"""BlazeFace in PyTorch, read from the vendored MediaPipe model (no MediaPipe at run time).

The short-range BlazeFace model (``assets/face_detection_short_range.tflite``, Apache-2.0)
is a small graph of 2-D and depthwise convolutions, residual adds, channel pads and max
pools, with its weights stored as FP16 behind DEQUANTIZE ops. :func:`read_graph` parses
the flatbuffer with the ``tflite`` package and keeps each op with its constant inputs
dequantized; :class:`BlazeFaceNet` runs those ops in order with ``torch.nn.functional``
(NCHW shapes, channels last in memory; TFLite's NHWC weights transposed once at load), so
the network runs on any device PyTorch does and takes a batch of frames at once.
:class:`TorchFaceDetector` then does what MediaPipe's face detector does around it: the
frame letterboxed into 128x128 and scaled to [-1, 1], the 896 SSD anchors of the
short-range model, sigmoid scores, box decoding, and weighted non-maximum suppression, and
gives :class:`Detection` boxes in the frame's coordinates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from analyzer.errors import FaceModelError
from analyzer.faces import BLAZEFACE_SHORT_RANGE, Detection, fit_within

INPUT = 128
SCORE_CLIP = 100.0
# The short-range model's anchors (MediaPipe's SsdAnchorsCalculator options): strides 8,
# 16, 16, 16 over a 128-pixel input; layers of one stride share a grid, 2 anchors per
# layer; every anchor is a unit box at its cell's centre (fixed anchor size).
STRIDES = (8, 16, 16, 16)


@dataclass
class Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    ops: list[Op]
    constants: dict[int, np.ndarray]  # tensor index -> value (FP32, TFLite layout)
    input: int
    outputs: list[int]  # regressors (1, 896, 16), classificators (1, 896, 1)


def read_graph(path: Path = BLAZEFACE_SHORT_RANGE) -> Graph:
    """The model's ops and constants, FP16 weights dequantized to FP32."""
    try:
        import tflite  # type: ignore[import-untyped]
    except ImportError as exc:  # a dependency of the package; only a broken install lacks it
        raise FaceModelError("the tflite package is missing; reinstall deepfake-monitor") from exc
    if not path.is_file():
        raise FaceModelError(f"face model {path} is missing; reinstall the package")
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    types = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32,
             tflite.TensorType.INT32: np.int32}  # fmt: skip

    def constant(index: int) -> np.ndarray | None:
        tensor = graph.Tensors(index)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        dtype = types[tensor.Type()]
        return np.frombuffer(data.tobytes(), dtype).reshape(tensor.ShapeAsNumpy())

    constants: dict[int, np.ndarray] = {}
    ops: list[Op] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs = [int(op.Inputs(j)) for j in range(op.InputsLength())]
        outputs = [int(op.Outputs(j)) for j in range(op.OutputsLength())]
        for index in inputs:
            if index >= 0 and index not in constants:
                value = constant(index)
                if value is not None:
                    constants[index] = value
        if kind == "DEQUANTIZE":  # FP16 weights: the op's output is the FP32 constant
            constants[outputs[0]] = constants[inputs[0]].astype(np.float32)
            continue
        options = _options(tflite, op, kind)
        if kind == "RESHAPE":  # the output tensor's shape says it (the op's input may not)
            options["shape"] = [int(d) for d in graph.Tensors(outputs[0]).ShapeAsNumpy()]
        ops.append(Op(kind, inputs, outputs, options))
    outputs = [int(graph.Outputs(j)) for j in range(graph.OutputsLength())]
    return Graph(ops, constants, int(graph.Inputs(0)), outputs)


def _options(tflite: Any, op: Any, kind: str) -> dict[str, Any]:
    table = op.BuiltinOptions()
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return {"stride": (opts.StrideH(), opts.StrideW()), "same": opts.Padding() == 0,
                "relu": opts.FusedActivationFunction() == 1}  # fmt: skip
    if kind == "MAX_POOL_2D":
        opts = tflite.Pool2DOptions()
        opts.Init(table.Bytes, table.Pos)
        size, stride = (opts.FilterHeight(), opts.FilterWidth()), (opts.StrideH(), opts.StrideW())
        return {"size": size, "stride": stride, "same": opts.Padding() == 0}
    if kind == "ADD":
        opts = tflite.AddOptions()
        opts.Init(table.Bytes, table.Pos)
        return {"relu": opts.FusedActivationFunction() == 1}
    if kind == "CONCATENATION":
        opts = tflite.ConcatenationOptions()
        opts.Init(table.Bytes, table.Pos)
        return {"axis": opts.Axis()}
    return {}


def _same_pads(x: torch.Tensor, size: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TensorFlow's SAME padding as ``F.pad`` takes it (left, right, top, bottom): the odd
    pixel goes at the bottom and right."""
    pads = []
    for dim, k, s in ((x.shape[3], size[1], stride[1]), (x.shape[2], size[0], stride[0])):
        total = max((math.ceil(dim / s) - 1) * s + k - dim, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _same_pad(x: torch.Tensor, size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    pads = _same_pads(x, size, stride)
    return F.pad(x, pads) if any(pads) else x


class BlazeFaceNet(torch.nn.Module):
    """The TFLite graph run op by op; input (N, 3, 128, 128) in [-1, 1], NCHW."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self._params = torch.nn.ParameterDict()
        depthwise = {op.inputs[1] for op in graph.ops if op.kind == "DEPTHWISE_CONV_2D"}
        for index, value in graph.constants.items():
            tensor = torch.from_numpy(value.copy())
            if value.ndim == 4 and value.dtype == np.float32:
                tensor = tensor.permute(0, 3, 1, 2)  # OHWI -> OIHW
                if index in depthwise:  # (1, C, kh, kw) -> (C, 1, kh, kw): a group a channel
                    tensor = tensor.permute(1, 0, 2, 3)
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            if tensor.is_floating_point():
                self._params[str(index)] = torch.nn.Parameter(tensor, requires_grad=False)
        self._ints = {i: v for i, v in graph.constants.items() if v.dtype == np.int32}

    def _const(self, index: int) -> torch.Tensor:
        return self._params[str(index)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Channels last (NHWC in memory, as TFLite runs it), weights too: the letterboxes
        # come so (a view of NHWC pixels), and oneDNN's depthwise convolutions run about
        # 1.6x faster so than in NCHW on a CPU; TFLite's NHWC flatten is then no copy.
        values: dict[int, torch.Tensor] = {
            self.graph.input: x.contiguous(memory_format=torch.channels_last)
        }
        for op in self.graph.ops:
            a = values.get(op.inputs[0])
            o = op.options
            if op.kind == "CONV_2D" or op.kind == "DEPTHWISE_CONV_2D":
                weight, bias = self._const(op.inputs[1]), self._const(op.inputs[2])
                groups = weight.shape[0] if op.kind == "DEPTHWISE_CONV_2D" else 1
                assert a is not None
                left, right, top, bottom = (
                    _same_pads(a, weight.shape[2:], o["stride"]) if o["same"] else [0] * 4
                )
                padding = (top, left)  # even on both sides (stride 1, odd kernel): no padded copy
                if (left, top) != (right, bottom):
                    a, padding = F.pad(a, [left, right, top, bottom]), (0, 0)
                y = F.conv2d(a, weight, bias, stride=o["stride"], padding=padding, groups=groups)
                values[op.outputs[0]] = F.relu(y, inplace=True) if o["relu"] else y
            elif op.kind == "ADD":
                b = values[op.inputs[1]]
                assert a is not None
                y = a + b
                values[op.outputs[0]] = F.relu(y, inplace=True) if o["relu"] else y
            elif op.kind == "RELU":
                assert a is not None
                values[op.outputs[0]] = F.relu(a)
            elif (
                op.kind == "PAD"
            ):  # channels only, in this model: NHWC pads [[0,0],[0,0],[0,0],[0,c]]
                pads = self._ints[op.inputs[1]]
                assert a is not None
                # F.pad goes from the last dim: W, H, then C.
                values[op.outputs[0]] = F.pad(a, [int(p) for p in (*pads[2], *pads[1], *pads[3])])
            elif op.kind == "MAX_POOL_2D":
                assert a is not None
                if o["same"]:
                    a = _same_pad(a, o["size"], o["stride"])
                values[op.outputs[0]] = F.max_pool2d(a, o["size"], o["stride"])
            elif op.kind == "RESHAPE":  # NCHW back to NHWC first: TFLite flattens NHWC
                assert a is not None
                nhwc = a.permute(0, 2, 3, 1) if a.dim() == 4 else a
                values[op.outputs[0]] = nhwc.reshape(a.shape[0], *o["shape"][1:])
            elif op.kind == "CONCATENATION":
                values[op.outputs[0]] = torch.cat([values[i] for i in op.inputs], dim=o["axis"])
            else:
                raise FaceModelError(f"face model op {op.kind} is not supported")
        regressors, scores = (values[i] for i in self.graph.outputs)
        return regressors, scores


def anchors() -> np.ndarray:
    """(896, 2) anchor centres (x, y) in [0, 1], in the model's output order."""
    out = []
    layer = 0
    while layer < len(STRIDES):
        stride, per_cell = STRIDES[layer], 0
        while layer < len(STRIDES) and STRIDES[layer] == stride:
            per_cell += 2
            layer += 1
        cells = math.ceil(INPUT / stride)
        for y in range(cells):
            for x in range(cells):
                out += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.array(out, np.float32)


@dataclass(frozen=True)
class Letterboxed:
    """A frame letterboxed for the network, and what maps its boxes back to the frame."""

    square: np.ndarray | torch.Tensor  # (128, 128, 3) uint8 RGB (on the host or a device)
    frame_shape: tuple[int, int]  # the frame's (height, width)
    scale: float  # letterbox pixels per frame pixel
    ox: float  # the letterbox's left and top borders, as fractions of INPUT
    oy: float


class TorchFaceDetector:
    """BlazeFace short range in PyTorch: the same boxes as :class:`BlazeFaceDetector`."""

    #: It takes frames that are tensors too (:class:`~analyzer.faces.FaceTracker`).
    device_frames = True

    def __init__(
        self,
        model_path: Path = BLAZEFACE_SHORT_RANGE,
        *,
        min_confidence: float = 0.5,
        suppression_iou: float = 0.3,
        max_side: int = 512,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.net = BlazeFaceNet(read_graph(model_path)).to(self.device).eval()
        self.anchors = anchors()
        self.min_confidence = min_confidence
        self.suppression_iou = suppression_iou
        self.max_side = max_side

    def letterbox(self, rgb: np.ndarray) -> Letterboxed:
        """128x128 RGB with the frame scaled to fit and centred, and how to map back."""
        h, w = rgb.shape[:2]
        rgb = fit_within(rgb, self.max_side)  # as BlazeFaceDetector hands MediaPipe its frame
        sh, sw = rgb.shape[:2]
        # An affine warp with sub-pixel offsets, as MediaPipe's ImageToTensor does; a
        # resize into whole-pixel borders shifted small faces' boxes (IoU 0.58 at worst
        # against MediaPipe on the bundled photos, 0.94 with the warp).
        s = INPUT / max(sh, sw)
        ox, oy = (INPUT - sw * s) / 2, (INPUT - sh * s) / 2
        warp = np.array([[s, 0, ox], [0, s, oy]], np.float32)
        square = cv2.warpAffine(rgb, warp, (INPUT, INPUT), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)  # fmt: skip
        return Letterboxed(square, (h, w), INPUT / max(h, w), ox / INPUT, oy / INPUT)

    @torch.inference_mode()
    def letterbox_on_device(self, frame: torch.Tensor) -> Letterboxed:
        """:meth:`letterbox` of an (H, W, 3) uint8 frame that is a tensor (on the engine's
        device, say), done where the frame is, as two matrix products: each axis's
        OpenCV area scaling to ``max_side`` and bilinear warp (black outside) is one
        (128, side) matrix (:func:`letterbox_axis`), so ``rows @ plane @ cols.T`` is the
        host's square within a level and finds the same faces (tests/test_faces.py)."""
        h, w = frame.shape[:2]
        r = min(1.0, self.max_side / max(h, w))
        sh, sw = (max(1, round(h * r)), max(1, round(w * r))) if r < 1.0 else (h, w)
        s = INPUT / max(sh, sw)
        ox, oy = (INPUT - sw * s) / 2, (INPUT - sh * s) / 2
        rows = _axis_on(frame.device, h, sh, s, oy)
        cols = _axis_on(frame.device, w, sw, s, ox)
        planes = frame.permute(2, 0, 1).float()  # (3, H, W)
        square = rows @ planes @ cols.T  # (3, 128, 128)
        square = square.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        return Letterboxed(square, (h, w), INPUT / max(h, w), ox / INPUT, oy / INPUT)

    @torch.inference_mode()
    def network(self, squares: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The network over (N, 128, 128, 3) uint8 letterboxes (on the host, or a tensor on
        any device): box regressors (N, 896, 16) and face scores (N, 896), on the host. The
        one step worth batching across streams: :class:`~streamer.detection.BatchedDetector`
        runs it in the engine's thread."""
        batch = torch.as_tensor(squares, device=self.device)
        x = batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        regressors, logits = self.net(x)
        scores = torch.sigmoid(logits[..., 0].clamp(-SCORE_CLIP, SCORE_CLIP))
        return regressors.cpu().numpy(), scores.cpu().numpy()

    def decode(self, boxed: Letterboxed, reg: np.ndarray, score: np.ndarray) -> list[Detection]:
        """One frame's detections from its network output: anchors, then weighted NMS."""
        h, w = boxed.frame_shape
        keep = score >= self.min_confidence
        centre = reg[keep, :2] / INPUT + self.anchors[keep]
        size = reg[keep, 2:4] / INPUT
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        # Back from the letterbox to the frame, normalised to [0, 1].
        span = (np.array([w, h]) * boxed.scale / INPUT).astype(np.float32)
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - boxed.ox) / span[0]
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - boxed.oy) / span[1]
        return self._suppress(boxes, score[keep])

    def detect_batch(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[list[Detection]]:
        """Detections for several frames (host arrays or tensors) in one network call."""
        if not frames:
            return []
        boxed = [self.boxed(f) for f in frames]
        regs, scores = self.network(stack_squares([b.square for b in boxed]))
        return [self.decode(*args) for args in zip(boxed, regs, scores, strict=True)]

    def boxed(self, frame: np.ndarray | torch.Tensor) -> Letterboxed:
        """The letterbox of a host frame on the host, of a tensor where the tensor is."""
        if isinstance(frame, torch.Tensor):
            return self.letterbox_on_device(frame)
        return self.letterbox(frame)

    def detect(self, rgb: np.ndarray | torch.Tensor) -> list[Detection]:
        return self.detect_batch([rgb])[0]

    def _suppress(self, boxes: np.ndarray, scores: np.ndarray) -> list[Detection]:
        """Weighted non-maximum suppression, as MediaPipe's face detector does it: each
        cluster of overlapping boxes becomes their score-weighted mean."""
        order = np.argsort(-scores)
        remaining = list(order)
        found = []
        while remaining:
            top = remaining[0]
            overlaps = _iou(boxes[top], boxes[remaining])
            cluster = [remaining[i] for i in np.flatnonzero(overlaps > self.suppression_iou)]
            weights = scores[cluster]
            box = (boxes[cluster] * weights[:, None]).sum(0) / weights.sum()
            x0, y0, x1, y1 = (float(v) for v in np.clip(box, 0.0, 1.0))
            if x1 > x0 and y1 > y0:
                found.append(Detection((x0, y0, x1, y1), float(scores[top])))
            taken = set(cluster)
            remaining = [r for r in remaining if r not in taken]
        return found

    def close(self) -> None:
        return None

    def __enter__(self) -> TorchFaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=64)
def letterbox_axis(size: int, fitted: int, scale: float, offset: float) -> np.ndarray:
    """One axis of :meth:`TorchFaceDetector.letterbox` as a (128, size) float32 matrix:
    ``cv2.resize(INTER_AREA)`` from ``size`` to ``fitted`` pixels (each output pixel the
    mean of the input it covers, part pixels by the part), then ``cv2.warpAffine``'s
    bilinear taps at ``(u - offset) / scale`` (OpenCV 5's float coordinates; 4.x rounded
    them to 32nds of a pixel), a tap outside the picture black."""
    area = np.eye(size)
    if fitted != size:
        area = np.zeros((fitted, size))
        step = size / fitted
        for i in range(fitted):
            lo, hi = i * step, min((i + 1) * step, size)
            for j in range(int(lo), min(math.ceil(hi), size)):
                area[i, j] = (min(hi, j + 1) - max(lo, j)) / (hi - lo)
    warp = np.zeros((INPUT, fitted))
    for u in range(INPUT):
        x = (u - offset) / scale
        base = math.floor(x)
        for tap, weight in ((base, 1 - (x - base)), (base + 1, x - base)):
            if 0 <= tap < fitted:
                warp[u, tap] = weight
    return (warp @ area).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _axis_on(
    device: torch.device, size: int, fitted: int, scale: float, offset: float
) -> torch.Tensor:
    """:func:`letterbox_axis` kept on ``device`` (a stream's frames keep their size)."""
    return torch.from_numpy(letterbox_axis(size, fitted, scale, offset)).to(device)


def stack_squares(squares: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
    """Letterboxes into one batch: on the host, or a tensor where any of them is one."""
    device = next((q.device for q in squares if isinstance(q, torch.Tensor)), None)
    if device is not None:
        return torch.stack([torch.as_tensor(q, device=device) for q in squares])
    return np.stack(squares)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)
