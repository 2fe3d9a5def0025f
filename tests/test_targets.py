"""Supervision targets: Sobel gradients and 5-point Laplacians in coordinate units, PSNR, alignment."""
import math

import pytest
import torch

import inrprior as ip
from inrprior.functions import Functions
from inrprior.targets import align_affine, align_offset, image_gradient, image_laplacian, psnr

A, B = 2.0, 3.0  # frequencies along x and y, in radians per coordinate unit


def sine_image(h, w, dtype=torch.float64):
    """f(x, y) = 0.5 + 0.25 sin(A x + B y) sampled at the pixel centres, with its analytic derivatives."""
    xy = ip.grid(h, w, dtype=dtype)
    x, y = xy[:, 0].reshape(h, w), xy[:, 1].reshape(h, w)
    phase = A * x + B * y
    value = 0.5 + 0.25 * torch.sin(phase)
    grad = torch.stack([0.25 * A * torch.cos(phase), 0.25 * B * torch.cos(phase)], dim=-1)
    lap = -0.25 * (A ** 2 + B ** 2) * torch.sin(phase)
    return value[None, None], grad[None, None], lap[None, None]


def interior(t):
    return t[:, :, 1:-1, 1:-1]


def test_sobel_gradient_matches_analytic_derivative_in_coordinate_units():
    value, grad, _ = sine_image(64, 48)  # non-square: x and y scale differently
    g = image_gradient(value)
    assert g.shape == (1, 1, 64, 48, 2)
    err = (interior(g) - interior(grad)).abs().max()
    assert err < 0.01 * grad.abs().max(), err
    # per-pixel units would be off by W/2 = 24 and H/2 = 32: make sure the conversion is the right way round
    assert torch.allclose(interior(g)[..., 0].abs().max(), interior(grad)[..., 0].abs().max(), rtol=0.02)
    assert torch.allclose(interior(g)[..., 1].abs().max(), interior(grad)[..., 1].abs().max(), rtol=0.02)


def test_laplacian_matches_analytic_laplacian_in_coordinate_units():
    value, _, lap = sine_image(64, 48)
    l = image_laplacian(value)
    assert l.shape == (1, 1, 64, 48)
    err = (interior(l) - interior(lap)).abs().max()
    assert err < 0.01 * lap.abs().max(), err


def test_linear_ramp_gives_exact_gradient_and_zero_laplacian_inside():
    h, w = 10, 14
    xy = ip.grid(h, w, dtype=torch.float64)
    img = (0.3 * xy[:, 0] - 0.2 * xy[:, 1] + 0.5).reshape(1, 1, h, w)
    g = interior(image_gradient(img))
    assert torch.allclose(g[..., 0], torch.full_like(g[..., 0], 0.3))
    assert torch.allclose(g[..., 1], torch.full_like(g[..., 1], -0.2))
    assert interior(image_laplacian(img)).abs().max() < 1e-10


def test_targets_match_a_siren_own_derivatives():
    torch.manual_seed(0)
    net = ip.Siren(2, 2, 16, 1, w0=2.0).double()  # smooth enough to be resolved by a 96x96 grid
    f = Functions(net, net.init_params(1))
    q = f.render_derivatives(96, 96, ("value", "gradient", "laplacian"))
    g = image_gradient(q.value)
    l = image_laplacian(q.value)
    assert (interior(g) - interior(q.gradient)).abs().max() < 0.01 * q.gradient.abs().max()
    assert (interior(l) - interior(q.laplacian)).abs().max() < 0.02 * q.laplacian.abs().max()


def test_filters_run_per_image_and_per_channel():
    torch.manual_seed(0)
    imgs = torch.rand(3, 2, 9, 7)
    g, l = image_gradient(imgs), image_laplacian(imgs)
    for i in range(3):
        for c in range(2):
            one = imgs[i:i + 1, c:c + 1]
            assert torch.allclose(g[i, c], image_gradient(one)[0, 0], atol=1e-6)
            assert torch.allclose(l[i, c], image_laplacian(one)[0, 0], atol=1e-5)
    # replicate padding: a constant image has zero derivatives everywhere, borders included
    const = torch.full((1, 1, 5, 6), 0.7)
    assert image_gradient(const).abs().max() < 1e-6 and image_laplacian(const).abs().max() < 1e-5


def test_psnr_per_image():
    a = torch.zeros(2, 1, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    p = psnr(b, a)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.tensor([20.0, 40.0]), atol=1e-4)
    assert math.isclose(psnr(b[0], a[0]).item(), 20.0, abs_tol=1e-4)  # a single (C, H, W) image
    assert torch.isclose(psnr(2 * b, 2 * a, data_range=2.0), p, atol=1e-4).all()
    assert torch.isinf(psnr(a, a)).all()
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:, :, :3])


def test_align_offset_and_affine_remove_what_the_operators_cannot_see():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    xy = ip.grid(8, 10, dtype=torch.float64)
    x, y = xy[:, 0].reshape(8, 10), xy[:, 1].reshape(8, 10)
    offsets = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    slopes = torch.randn(2, 3, 2, 1, 1, dtype=torch.float64)
    shifted = target + offsets
    tilted = shifted + slopes[:, :, 0] * x + slopes[:, :, 1] * y
    assert torch.allclose(align_offset(shifted, target), target)
    assert torch.allclose(align_affine(tilted, target), target)
    assert not torch.allclose(align_offset(tilted, target), target)
    # least squares: the aligned residual has zero mean (offset) and is orthogonal to x and y (affine)
    noisy = tilted + 0.1 * torch.randn_like(target)
    r = align_affine(noisy, target) - target
    assert r.mean(dim=(-2, -1)).abs().max() < 1e-10
    assert (r * x).mean(dim=(-2, -1)).abs().max() < 1e-10 and (r * y).mean(dim=(-2, -1)).abs().max() < 1e-10
    assert align_affine(noisy.float(), target.float()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_gradient(torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        image_laplacian(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shapes differ"):
        align_offset(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
