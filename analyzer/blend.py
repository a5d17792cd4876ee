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


# --- varied self-blends -------------------------------------------------------------
#
# ``self_blend`` above always leaves the same two marks: a pasted face rendered at a low
# resolution and stepped in colour. A model trained on it learns those marks, and calls
# FAKE only what has them (issue: a Poisson-blended swap at full resolution reads REAL).
# ``varied_blend`` follows what self-blended training images do in the literature: the
# copy is changed by a random mix of colour, sharpness, resolution and noise, any of which
# may be absent; its low frequencies may be matched to the frame (as Poisson blending
# does), and it is pasted under masks of many shapes (whole face, mouth, eyes, box),
# feathers and blend ratios. What is left in common is the seam: a region whose texture,
# detail or colour disagrees with the rest of the face.

# Mask kinds of ``varied_blend``: their ellipse (or box) centre and half-axes in crop units
# of [-1, 1] (low, high per value): face, mouth, eyes band, rounded box.
_MASKS = {
    "face": ((-0.06, 0.06), (-0.06, 0.12), (0.45, 0.85), (0.6, 1.0)),
    "mouth": ((-0.06, 0.06), (0.22, 0.44), (0.22, 0.4), (0.12, 0.22)),
    "eyes": ((-0.05, 0.05), (-0.38, -0.15), (0.45, 0.68), (0.1, 0.2)),
    "box": ((-0.05, 0.05), (-0.05, 0.1), (0.45, 0.75), (0.55, 0.85)),
}


# The least mean absolute difference between a varied copy and its frame (3 of 255 levels).
MIN_VARIED_STEP = 3 / 255


def _choice(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=gen)


def _masks(b: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) feathered masks in [0, 1] of a random kind each, times a blend ratio."""
    kinds = list(_MASKS)
    kind = _choice(b, len(kinds), gen)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)[:, None]
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)[None, :]
    masks = torch.empty(b, 1, h, w)
    for i in range(b):
        name = kinds[int(kind[i])]
        (cx, cy, rx, ry) = (float(_uniform((1,), lo, hi, gen)) for lo, hi in _MASKS[name])
        power = 4.0 if name in ("box", "eyes") else 2.0  # a rounded box, or an ellipse
        d = ((xs - cx).abs() / rx) ** power + ((ys - cy).abs() / ry) ** power
        masks[i, 0] = (d <= 1).float()
    # Feather: log-uniform from a hard edge (half a pixel) to 8 % of the crop.
    feather = torch.exp(_uniform((b,), math.log(0.5), math.log(0.08 * w), gen))
    masks = _gaussian_blur(masks, feather)
    masks = masks / masks.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    ratio = torch.where(torch.rand(b, generator=gen) < 0.5, 1.0, _uniform((b,), 0.4, 1.0, gen))
    return masks * ratio[:, None, None, None]


def varied_blend(clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, T, 3, H, W) clips in [0, 1] -> the same clips, each one self-blended with a
    random mix of changes (none of them forced), under a mask of a random shape.
    """
    b, t, c, h, w = clips.shape
    dev = clips.device
    x = clips.flatten(0, 1)  # (N, 3, H, W)
    n = b * t

    def per_frame(v: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (N, ...) on the device
        return v.repeat_interleave(t, 0).to(dev)

    patch = x.clone()
    # Colour: contrast, per-channel gain and an offset, absent for a third of the clips.
    coloured = (torch.rand(b, generator=gen) < 2 / 3).float()[:, None, None, None]
    contrast = 1 + coloured * _uniform((b, 1, 1, 1), -0.12, 0.12, gen)
    gain = 1 + coloured * _uniform((b, c, 1, 1), -0.07, 0.07, gen)
    offset = coloured * _uniform((b, 1, 1, 1), -12 / 255, 12 / 255, gen)
    mean = patch.mean((2, 3), keepdim=True)
    patch = (patch - mean) * per_frame(contrast) + mean * per_frame(gain) + per_frame(offset)

    # Detail, one of: unchanged, blurred, re-sampled from a lower resolution, sharpened.
    detail = _choice(b, 4, gen)
    sigma = _uniform((b,), 0.4, 1.3, gen)
    if (detail == 1).any():
        pick = per_frame(detail == 1)
        patch[pick] = _gaussian_blur(patch[pick], per_frame(sigma)[pick])
    factor = _uniform((b,), 1.3, 3.0, gen)
    for i in (detail == 2).nonzero().flatten().tolist():
        side = (max(8, round(h / float(factor[i]))), max(8, round(w / float(factor[i]))))
        frames = patch[i * t : (i + 1) * t]
        low = F.interpolate(frames, size=side, mode="area")
        patch[i * t : (i + 1) * t] = F.interpolate(
            low, size=(h, w), mode="bilinear", align_corners=False
        )
    if (detail == 3).any():
        pick = per_frame(detail == 3)
        amount = per_frame(_uniform((b,), 0.3, 1.0, gen))[pick][:, None, None, None]
        soft = _gaussian_blur(patch[pick], torch.full((int(pick.sum()),), 1.0, device=dev))
        patch[pick] = patch[pick] + amount * (patch[pick] - soft)

    # Noise of its own on the pasted region, for a third of the clips.
    noisy = per_frame((torch.rand(b, generator=gen) < 1 / 3).float() * _uniform((b,), 1, 5, gen))
    noise = torch.randn((n, c, h, w), generator=gen).to(dev)
    patch = patch + noise * (noisy / 255)[:, None, None, None]

    # Half of the copies get their low frequencies matched to the frame, as Poisson
    # blending leaves them: no colour step, only the detail differs.
    matched = per_frame(torch.rand(b, generator=gen) < 0.5)
    if matched.any():
        wide = per_frame(_uniform((b,), 3.0, 8.0, gen))[matched]
        patch[matched] = patch[matched] + _gaussian_blur(x[matched] - patch[matched], wide)

    # Whatever the mix, the copy differs from the frame by at least MIN_VARIED_STEP on
    # average: a twin that cannot be told from its original teaches only noise.
    step = (patch - x).abs().reshape(b, -1).mean(1)
    grow = (MIN_VARIED_STEP / step.clamp_min(1e-6)).clamp_min(1.0).repeat_interleave(t)
    patch = x + (patch - x) * grow[:, None, None, None]

    # Where the copy lands: a small shift and scale, and for half of the clips a wobble.
    wobble = (torch.rand(b, 1, generator=gen) < 0.5).float() * _uniform((b, 1), 0.0, 0.05, gen)
    dx = _uniform((b, 1), -0.04, 0.04, gen) + wobble * _wave(b, t, gen, 0.3, 2.5)
    dy = _uniform((b, 1), -0.04, 0.04, gen) + wobble * _wave(b, t, gen, 0.3, 2.5)
    scale = _uniform((b, 1), 0.95, 1.05, gen).expand(b, t)
    theta = torch.zeros(b, t, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = 1 / scale
    theta[..., 0, 2], theta[..., 1, 2] = -dx / scale, -dy / scale
    grid = F.affine_grid(theta.flatten(0, 1).to(dev), [n, c, h, w], align_corners=False)
    moved = F.grid_sample(patch, grid, padding_mode="reflection", align_corners=False)
    mask = _masks(b, h, w, gen).to(dev)
    mask = mask[:, None].expand(b, t, 1, h, w).flatten(0, 1)
    mask = F.grid_sample(mask, grid, align_corners=False)

    out = x * (1 - mask) + moved * mask
    return out.clamp(0, 1).view(b, t, c, h, w)


def recompress(
    clips: torch.Tensor, share: float, gen: torch.Generator, quality: tuple[int, int] = (35, 95)
) -> torch.Tensor:
    """(B, T, 3, H, W) clips in [0, 1] -> the same, about ``share`` of them (REAL and FAKE
    alike) JPEG-compressed frame by frame at one random quality per clip.

    A seam that compression has smeared must still read as one, and compression alone
    must not.
    """
    import cv2
    import numpy as np

    b, t = clips.shape[:2]
    pick = torch.rand(b, generator=gen) < share
    if not pick.any():
        return clips
    q = torch.randint(quality[0], quality[1] + 1, (b,), generator=gen)
    out = clips.clone()
    for i in pick.nonzero().flatten().tolist():
        frames = (clips[i].detach().permute(0, 2, 3, 1).cpu() * 255).round().to(torch.uint8)
        decoded: list[np.ndarray] = []
        for frame in frames.numpy():
            _, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(q[i])])
            again = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
            decoded.append(frame if again is None else again)
        back = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        out[i] = (back.float() / 255).to(clips.device)
    return out
