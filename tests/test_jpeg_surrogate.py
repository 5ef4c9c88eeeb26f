"""The differentiable JPEG that gives the EOT's real JPEG its gradient (guardkit.jpeg_surrogate)."""

from __future__ import annotations

import torch

from guardkit.eot import jpeg_bpda, jpeg_through_surrogate, real_jpeg
from guardkit.imageio import load_rgb
from guardkit.jpeg_surrogate import _CHROMA, _LUMA, dct_matrix, jpeg_surrogate, quant_table, soft_round


def test_quant_tables_scale_as_libjpeg_does():
    assert quant_table(_LUMA, 50)[0, 0] == 16 and quant_table(_LUMA, 75)[0, 0] == 8  # scale 100 and 50
    assert quant_table(_LUMA, 100).max() == 1 and quant_table(_CHROMA, 10).max() == 255  # clamped to 1..255
    dct = dct_matrix(dtype=torch.float64)
    assert torch.allclose(dct @ dct.T, torch.eye(8, dtype=torch.float64), atol=1e-12)


def test_soft_round_is_exact_at_integers_and_flat_there():
    u = torch.tensor([-2.0, 0.0, 3.0, 0.25], requires_grad=True)
    value = soft_round(u)
    (grad,) = torch.autograd.grad(value.sum(), u)
    assert torch.allclose(value[:3], u[:3]) and torch.allclose(grad[:3], torch.zeros(3))
    assert grad[3] == torch.tensor(3 * 0.25**2)


def test_surrogate_follows_a_real_jpeg_of_a_photo(faces_dir):
    array = load_rgb(faces_dir / "obama2.jpg")[:200, :264]  # not a multiple of 16: the padding is exercised
    photo = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255
    real = real_jpeg(photo, 75)
    approx = jpeg_through_surrogate(photo, 75)
    assert torch.equal(approx, real)  # the value is Pillow's
    surrogate_error = (jpeg_surrogate(photo, 75) - real).abs().mean()
    identity_error = (photo - real).abs().mean()
    assert surrogate_error < 0.6 * identity_error, (float(surrogate_error), float(identity_error))


def test_the_gradient_knows_what_a_resave_keeps():
    """On a flat patch a re-save drops a small checkerboard and keeps a small change of the block's mean: the
    identity gradient (BPDA) rates both alike, the surrogate's does not."""
    x = torch.full((1, 3, 32, 32), 0.43, requires_grad=True)
    rows = torch.arange(32)
    checker = ((rows[:, None] + rows[None, :]) % 2 * 2 - 1).float().expand(1, 3, 32, 32)
    flat = torch.ones(1, 3, 32, 32)
    for through, expect_checker_kept in ((jpeg_bpda, True), (jpeg_through_surrogate, False)):
        y = through(x, 75)
        (grad,) = torch.autograd.grad(y.sum(), x, retain_graph=True)  # a uniform brightening: the block means
        along_flat = float((grad * flat).sum())
        (grad,) = torch.autograd.grad((y * checker).sum(), x)
        along_checker = float((grad * checker).sum())
        assert along_flat > 0
        assert (along_checker > 0.5 * along_flat) == expect_checker_kept, (through.__name__, along_checker, along_flat)
