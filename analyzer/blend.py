"""Self-blended FAKEs made on the fly from REAL face clips, for training.

A REAL clip of 112x112 face crops becomes a FAKE by blending a changed copy of each frame
onto itself inside a feathered ellipse around the face: a colour grade (contrast,
per-channel gain, offset, at least ``MIN_STEP`` on average), sometimes a blur, a small
shift and scale, a slow per-frame wobble of the pasted face that real footage does not
have, and the copy rendered at a low resolution and off in mean colour, as face-swap
decoders leave their faces. This is the self-blend of ``deepfake-monitor synth --method
selfblend``, redrawn for every batch and done on the device: the same frames appear as
REAL and as FAKE with only the blending between them, so the blending is all a model can
learn from them, and no two epochs show it the same FAKE. The geometry is in crop units:
the preprocess crop is the face box grown by 20 %, the ellipse covers the inner face.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from analyzer import manipulations

# Mean absolute colour change of the pasted face, in [0, 1] units (8 of 255 levels).
MIN_STEP = 8 / 255
# Mean colour step of the pasted face per channel mean: synth's, in [0, 1] units.
MIN_COLOUR_STEP = manipulations.MIN_COLOUR_STEP / 255
# The side at which the copy is rendered before it is scaled up to the crop, in crop
# pixels: synth's RENDER_SIDE after preprocess's crop (the pasted square is about 1.08
# crops wide): (30, 52).
RENDER_SIDE = tuple(round(side / 1.08) for side in manipulations.RENDER_SIDE)
FPS = 30.0


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (N, C, H, W) with its own sigma (N,), reflect-padded."""
    from kornia.filters import gaussian_blur2d

    side = 2 * max(1, math.ceil(3 * float(sigma.max()))) + 1
    return gaussian_blur2d(x, (side, side), sigma[:, None].expand(-1, 2), border_type="reflect")


def _wave(b: int, t: int, gen: torch.Generator, low_hz: float, high_hz: float) -> torch.Tensor:
    """(b, t) smooth random signals in [-1, 1]: a weighted sum of three slow sines."""
    freq = _uniform((b, 3, 1), low_hz, high_hz, gen)
    phase = _uniform((b, 3, 1), 0, 2 * math.pi, gen)
    weight = -torch.log(torch.rand((b, 3, 1), generator=gen).clamp_min(1e-6))
    weight = weight / weight.sum(1, keepdim=True)  # Dirichlet(1, 1, 1)
    times = torch.arange(t, dtype=torch.float32) / FPS
    return (weight * torch.sin(2 * math.pi * freq * times + phase)).sum(1)


def self_blend(clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, T, 3, H, W) clips in [0, 1] -> the same clips, each one self-blended.

    Random draws come from ``gen`` (on the CPU); the work runs on the clips' device.
    """
    b, t, c, h, w = clips.shape
    dev = clips.device
    x = clips.flatten(0, 1)  # (N, 3, H, W)

    # Colour grade of the copy, per clip; at least MIN_STEP away from the original.
    mean = clips.mean((1, 3, 4), keepdim=True)  # (B, 1, 3, 1, 1)
    contrast = _uniform((b, 1, 1, 1, 1), 0.8, 1.2, gen).to(dev)
    gain = _uniform((b, 1, c, 1, 1), 0.85, 1.15, gen).to(dev)
    offset = _uniform((b, 1, 1, 1, 1), -18 / 255, 18 / 255, gen).to(dev)
    patch = (clips - mean) * contrast + mean * gain + offset
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        sigma = _uniform((b,), 0.4, 1.2, gen)[blur].repeat_interleave(t)
        chosen = patch[blur.to(dev)].flatten(0, 1)
        patch[blur.to(dev)] = _gaussian_blur(chosen, sigma.to(dev)).view(-1, t, c, h, w)
    step = (patch - clips).abs().mean((1, 2, 3, 4), keepdim=True)
    patch = clips + (patch - clips) * (MIN_STEP / step.clamp_min(1e-6)).clamp_min(1.0)

    # Rendered at a low resolution, as a face-swap decoder would (manipulations.RENDER_SIDE,
    # in crop pixels), then a mean colour step of at least MIN_COLOUR_STEP.
    small = torch.randint(RENDER_SIDE[0], RENDER_SIDE[1] + 1, (b,), generator=gen)
    for size in small.unique().tolist():
        chosen = (small == size).to(dev)
        frames = patch[chosen].flatten(0, 1)
        low = F.interpolate(frames, size=(size, size), mode="area")
        up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        patch[chosen] = up.view(-1, t, c, h, w)
    shift = (patch - clips).mean((1, 3, 4))  # (B, 3)
    size_of = shift.abs().mean(1, keepdim=True)
    random_dir = torch.where(torch.rand(b, c, generator=gen) < 0.5, -1.0, 1.0) * _uniform(
        (b, c), 0.5, 1.5, gen
    )
    direction = torch.where(size_of >= 1 / 255, shift, random_dir.to(dev))
    wanted = direction * (MIN_COLOUR_STEP / direction.abs().mean(1, keepdim=True))
    grow = (size_of < MIN_COLOUR_STEP).float()
    patch = patch + (grow * (wanted - shift))[:, None, :, None, None]

    # Where the copy lands: a fixed shift and scale per clip plus a per-frame wobble.
    amp = 0.027 * 2  # 2.7 % of the crop, in grid units of [-1, 1]
    dx = _uniform((b, 1), -0.06, 0.06, gen) + amp * _wave(b, t, gen, 0.3, 2.5)
    dy = _uniform((b, 1), -0.06, 0.06, gen) + amp * _wave(b, t, gen, 0.3, 2.5)
    scale = _uniform((b, 1), 0.96, 1.04, gen) * (1 + 0.02 * _wave(b, t, gen, 0.2, 1.5))
    theta = torch.zeros(b, t, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = 1 / scale
    theta[..., 0, 2], theta[..., 1, 2] = -dx / scale, -dy / scale
    grid = F.affine_grid(theta.flatten(0, 1).to(dev), [b * t, c, h, w], align_corners=False)
    moved = F.grid_sample(patch.flatten(0, 1), grid, padding_mode="reflection", align_corners=False)

    # A feathered ellipse over the inner face, moving with the copy.
    cx = _uniform((b,), -0.05, 0.05, gen)
    cy = _uniform((b,), -0.05, 0.08, gen)
    rx = _uniform((b,), 0.30, 0.41, gen) * 2
    ry = _uniform((b,), 0.39, 0.50, gen) * 2
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)[:, None]
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)[None, :]
    inside = ((xs - cx[:, None, None]) / (rx[:, None, None] / 2)) ** 2 + (
        (ys - cy[:, None, None]) / (ry[:, None, None] / 2)
    ) ** 2 <= 1
    mask = inside.float()[:, None].to(dev)  # (B, 1, H, W)
    feather = _uniform((b,), 0.022, 0.076, gen) * w
    mask = _gaussian_blur(mask, feather.to(dev))
    mask = mask[:, None].expand(b, t, 1, h, w).flatten(0, 1)
    mask = F.grid_sample(mask, grid, align_corners=False)

    out = x * (1 - mask) + moved * mask
    return out.clamp(0, 1).view(b, t, c, h, w)


def soften(clips: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """(B, T, 3, H, W) clips -> the same, with about ``share`` of them blurred as a whole
    (Gaussian, sigma 0.5 to 1.5 crop pixels, one per clip), whatever their label.

    A FAKE's pasted face is softer than its frame; a frame soft all over (a cheap camera, a
    zoom into a small photo) is not a FAKE, and training must show both.
    """
    b, t, c, h, w = clips.shape
    pick = torch.rand(b, generator=gen) < share
    if not pick.any():
        return clips
    sigma = _uniform((b,), 0.5, 1.5, gen)[pick].repeat_interleave(t)
    out = clips.clone()
    chosen = pick.to(clips.device)
    out[chosen] = _gaussian_blur(clips[chosen].flatten(0, 1), sigma.to(clips.device)).view(
        -1, t, c, h, w
    )
    return out
