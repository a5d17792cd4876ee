"""On-the-fly self-blends: the change sits on the face, not the border, and it moves; the
varied ones change the face in many ways and places; re-compression touches its share."""

from __future__ import annotations

import torch

from analyzer.blend import MIN_COLOUR_STEP, MIN_STEP, recompress, self_blend, soften, varied_blend


def _face_like_clips(b: int = 6, t: int = 8, size: int = 112, detail: int = 8) -> torch.Tensor:
    """Textured frames (one texel per ``detail`` pixels), the same in every frame of a clip
    (a still camera)."""
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(b, 1, 3, size // detail, size // detail, generator=gen)
    base = torch.nn.functional.interpolate(base[:, 0], size=(size, size), mode="bilinear")
    return base[:, None].expand(b, t, 3, size, size).clone()


def _detail(clips: torch.Tensor) -> torch.Tensor:
    """Per clip: the mean absolute horizontal gradient (what a blur lowers)."""
    return (clips[..., 1:] - clips[..., :-1]).abs().mean((1, 2, 3, 4))


def test_blend_changes_the_inner_face_and_leaves_the_corners():
    clips = _face_like_clips()
    out = self_blend(clips, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape and out.min() >= 0 and out.max() <= 1
    change = (out - clips).abs().mean(2)  # (B, T, H, W)
    centre = change[..., 40:72, 40:72].mean((1, 2, 3))
    corners = torch.stack(
        [change[..., :8, :8], change[..., :8, -8:], change[..., -8:, :8], change[..., -8:, -8:]]
    ).mean((0, 2, 3, 4))
    assert (centre > MIN_STEP).all(), centre
    assert (corners < 0.1 * centre).all(), (corners, centre)


def test_the_pasted_face_wobbles_from_frame_to_frame_and_draws_are_seeded():
    clips = _face_like_clips(t=30)
    out = self_blend(clips, torch.Generator().manual_seed(0))
    # The input does not move; the blended face does (real footage would move as one).
    drift = (out[:, 0] - out[:, -1]).abs().mean((1, 2, 3))
    assert (drift > 1e-3).all(), drift
    again = self_blend(clips, torch.Generator().manual_seed(0))
    other = self_blend(clips, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_the_pasted_face_is_softer_and_off_in_colour():
    """Rendered at a low resolution, like a face-swap decoder's face, with a colour step."""
    clips = _face_like_clips(t=2) * 0.5 + 0.5 * _face_like_clips(t=2, detail=2)
    out = self_blend(clips, torch.Generator().manual_seed(2))
    centre = (slice(None), slice(None), slice(None), slice(44, 68), slice(44, 68))
    assert (_detail(out[centre]) < 0.8 * _detail(clips[centre])).all()
    colour = (out[centre] - clips[centre]).mean((1, 3, 4)).abs().mean(1)
    assert (colour > 0.8 * MIN_COLOUR_STEP).all(), colour


def test_soften_blurs_about_its_share_of_clips_and_leaves_the_rest():
    clips = _face_like_clips(b=40, t=2, detail=2)
    out = soften(clips, 0.5, torch.Generator().manual_seed(0))
    untouched = (out == clips).flatten(1).all(1)
    assert 10 <= int(untouched.sum()) <= 30, untouched
    assert bool((_detail(out[~untouched]) < 0.95 * _detail(clips[~untouched])).all())
    assert torch.equal(soften(clips, 0.0, torch.Generator().manual_seed(0)), clips)


def _two_scale_clips(b: int, t: int = 2) -> torch.Tensor:
    return _face_like_clips(b=b, t=t) * 0.5 + 0.5 * _face_like_clips(b=b, t=t, detail=2)


def test_varied_blends_change_the_face_in_many_places_and_never_the_corners():
    clips = _two_scale_clips(64)
    out = varied_blend(clips, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape and out.min() >= 0 and out.max() <= 1
    change = (out - clips).abs().mean(2)  # (B, T, H, W)
    corners = torch.stack(
        [change[..., :8, :8], change[..., :8, -8:], change[..., -8:, :8], change[..., -8:, -8:]]
    ).mean((0, 2, 3, 4))
    assert (corners < 0.5 / 255).all(), corners * 255
    assert (change.amax((1, 2, 3)) > 4 / 255).all()  # every clip is changed somewhere
    # Some clips are changed only about the eyes, some only about the mouth, some all over.
    upper = change[..., 20:56, :].mean((1, 2, 3))
    lower = change[..., 60:100, :].mean((1, 2, 3))
    area = (change.mean(1) > 2 / 255).float().mean((1, 2))
    assert int((upper > 4 * lower).sum()) >= 6 and int((lower > 4 * upper).sum()) >= 6
    assert int((area > 0.3).sum()) >= 16 and int((area < 0.1).sum()) >= 6


def test_varied_blends_force_no_mark_of_their_own():
    """Neither a softer face nor a colour step is always there: many copies keep the
    frame's detail and colour, so only the seam is left to learn."""
    clips = _two_scale_clips(64)
    out = varied_blend(clips, torch.Generator().manual_seed(1))
    centre = (slice(None), slice(None), slice(None), slice(44, 68), slice(44, 68))
    keeps_detail = _detail(out[centre]) >= 0.95 * _detail(clips[centre])
    colour = (out[centre] - clips[centre]).mean((1, 3, 4)).abs().mean(1)
    assert int(keeps_detail.sum()) >= 16, keeps_detail
    assert int((colour < MIN_COLOUR_STEP / 2).sum()) >= 16, colour
    # The trainer hands clips permuted from (B, T, H, W, C): not contiguous.
    permuted = clips.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    again = varied_blend(permuted, torch.Generator().manual_seed(1))
    assert (out - again).abs().max() < 1e-3


def test_recompress_compresses_about_its_share_of_clips_and_leaves_the_rest():
    clips = _face_like_clips(b=40, t=2)
    out = recompress(clips, 0.5, torch.Generator().manual_seed(0))
    untouched = (out == clips).flatten(1).all(1)
    assert 10 <= int(untouched.sum()) <= 30, untouched
    error = (out[~untouched] - clips[~untouched]).abs().mean((1, 2, 3, 4))
    assert ((error > 0.5 / 255) & (error < 12 / 255)).all(), error * 255
    assert torch.equal(recompress(clips, 0.0, torch.Generator().manual_seed(0)), clips)
