"""Fitting from values / gradients / Laplacians, the fast forward mode behind it, and gradient-domain blending."""
import math

import numpy as np
import pytest
import torch

import inrprior as ip
from inrprior.fit import History, blend, composite_gradient, fit, parse_supervision, siren_query
from inrprior.functions import Functions, query_params_autodiff
from inrprior.targets import psnr

TINY = dict(in_features=2, hidden_features=32, hidden_layers=1, w0=30.0)


def smooth_image(c=1, h=12, w=12, seed=0, dtype=torch.float32):
    """A smooth test image: a few random low-frequency sinusoids per channel, in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    xy = ip.grid(h, w, dtype=torch.float64)
    freq = torch.randn(c, 3, 2, generator=g, dtype=torch.float64) * 2
    phase = torch.rand(c, 3, 1, generator=g, dtype=torch.float64) * 6.28
    v = torch.sin(torch.einsum("cfk,nk->cfn", freq, xy) + phase).mean(1)  # (c, n)
    return (0.5 + 0.4 * v / v.abs().max()).reshape(c, h, w).to(dtype)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_siren_query_matches_torch_func_values_and_param_gradients(order):
    torch.manual_seed(0)
    net = ip.Siren(out_features=2, **TINY).double()
    params = {k: v.requires_grad_() for k, v in net.init_params(3).items()}
    x = torch.rand(20, 2, dtype=torch.float64) * 2 - 1
    names = ("value", "gradient", "laplacian")[:order + 1]
    fast, ref = siren_query(net, params, x, order), query_params_autodiff(net, params, x, names)
    for name in names:
        assert torch.allclose(getattr(fast, name), getattr(ref, name), atol=1e-10, rtol=1e-10), name
    def loss(q):
        return sum(getattr(q, name).square().sum() for name in names)
    g_fast = torch.autograd.grad(loss(fast), list(params.values()))
    g_ref = torch.autograd.grad(loss(ref), list(params.values()))
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_value_fit_improves_and_records_history():
    img = smooth_image()
    net = ip.Siren(out_features=1, **TINY)
    f, hist = fit(img, steps=60, net=net, lr=1e-3, progress=False, log_every=20)
    assert isinstance(f, Functions) and len(f) == 1
    assert isinstance(hist, History) and hist.alignment == "none" and hist.supervision == {"value": 1.0}
    assert hist.step == [20, 40, 60] and len(hist.loss) == len(hist.psnr) == len(hist.time) == 3
    assert hist.time == sorted(hist.time) and hist.seconds >= hist.time[-1]
    assert hist.psnr[-1] > 30 and hist.loss[-1] < hist.loss[0]
    rendered = f.render(12, 12)
    assert math.isclose(psnr(rendered, img[None]).item(), hist.final_psnr[0], abs_tol=0.5)  # render clamps


def test_batch_fit_equals_independent_fits():
    imgs = torch.stack([smooth_image(seed=1), smooth_image(seed=2)]).double()  # (2, 1, 12, 12)
    net = ip.Siren(out_features=1, **TINY).double()
    init = Functions(net, net.init_params(2, generator=torch.Generator().manual_seed(3)))
    fb, hb = fit(imgs, steps=15, supervision={"value": 1.0, "gradient": 0.5}, net=net, lr=1e-3, init=init,
                 progress=False)
    for i in range(2):
        fi, hi = fit(imgs[i], steps=15, supervision={"value": 1.0, "gradient": 0.5}, net=net, lr=1e-3,
                     init=init[i], progress=False)
        for k in fb.params:
            assert torch.allclose(fb.params[k][i], fi.params[k][0], atol=1e-8), k
        assert math.isclose(hb.final_psnr[i], hi.final_psnr[0], rel_tol=1e-6)


def test_gradient_and_laplacian_fits_report_aligned_psnr():
    img = smooth_image()
    # w0 = 30 is too wiggly for derivatives sampled on a 12x12 grid: between the samples it goes unconstrained
    net = ip.Siren(2, 1, 32, 1, w0=10.0)
    _, hg = fit(img, steps=80, supervision="gradient", net=net, lr=1e-3, progress=False)
    _, hl = fit(img, steps=80, supervision="laplacian", net=net, lr=1e-3, progress=False)
    _, hm = fit(img, steps=2, supervision={"gradient": 1, "laplacian": 0.1}, net=net, progress=False)
    assert (hg.alignment, hl.alignment, hm.alignment) == ("offset", "affine", "offset")
    assert hg.psnr[0] < 20 and hg.psnr[-1] > 30  # measured 14 -> 36 dB
    assert hl.psnr[-1] > hl.psnr[0] + 3  # measured 15 -> 21 dB


def test_random_coordinate_batches_are_seeded():
    img = smooth_image(c=3, h=10, w=10)
    net = ip.Siren(out_features=3, **TINY)
    runs = [fit(img, steps=5, net=net, batch_size=30, seed=s, progress=False)[0] for s in (0, 0, 1)]
    full, _ = fit(img, steps=5, net=net, progress=False)
    k = "layers.0.weight"
    assert torch.equal(runs[0].params[k], runs[1].params[k])
    assert not torch.equal(runs[0].params[k], runs[2].params[k])
    assert not torch.equal(runs[0].params[k], full.params[k])


def test_init_is_copied_and_numpy_input_is_accepted():
    img = smooth_image(c=1).numpy()[0]  # an (H, W) numpy array
    net = ip.Siren(out_features=1, **TINY)
    start, _ = fit(img, steps=20, net=net, lr=1e-3, progress=False)
    before = {k: v.clone() for k, v in start.params.items()}
    same, _ = fit(img, steps=0, net=net, init=start, progress=False)
    more, hist = fit(img, steps=20, init=start, lr=1e-3, progress=False)  # net taken from the init
    assert all(torch.equal(start.params[k], before[k]) for k in before)  # the init was not changed
    assert all(torch.equal(same.params[k], before[k]) for k in before)
    assert hist.loss[0] < 0.05  # it starts from the fitted state, not from scratch


def test_compile_matches_eager():
    img = smooth_image()
    net = ip.Siren(out_features=1, **TINY)
    sup = {"value": 1.0, "gradient": 0.1}
    eager, he = fit(img, steps=5, supervision=sup, net=net, lr=1e-3, progress=False)
    compiled, hc = fit(img, steps=5, supervision=sup, net=net, lr=1e-3, progress=False, compile=True)
    for k in eager.params:  # fused kernels round differently: measured max difference 4e-8 after 5 steps
        assert torch.allclose(eager.params[k], compiled.params[k], atol=1e-5, rtol=0), k
    assert abs(he.final_psnr[0] - hc.final_psnr[0]) < 0.01


def test_bad_arguments_raise_clear_errors():
    img = smooth_image()
    net = ip.Siren(out_features=1, **TINY)
    with pytest.raises(ValueError, match="unknown supervision"):
        fit(img, steps=1, supervision="values", net=net, progress=False)
    for bad in ({"value": -1.0}, {"value": float("nan")}, {"gradient": "1"}, {"value": True}):
        with pytest.raises(ValueError, match="weight"):
            parse_supervision(bad)
    with pytest.raises(ValueError, match="at least one positive"):
        parse_supervision({"value": 0.0})
    with pytest.raises(TypeError, match="supervision"):
        parse_supervision(["value"])
    with pytest.raises(ValueError, match="1 channels"):
        fit(img, steps=1, net=ip.Siren(out_features=3, **TINY), progress=False)
    with pytest.raises(TypeError, match="Siren"):
        fit(img, steps=1, net=torch.nn.Linear(2, 1), progress=False)
    with pytest.raises(ValueError, match="init describes 2 functions"):
        fit(torch.stack([img] * 3), steps=1, net=net, init=net.init_params(2), progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit(img, steps=-1, net=net, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(img, steps=1, net=net, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit(torch.full((1, 4, 4), float("nan")), steps=1, net=net, progress=False)


def test_composite_gradient_picks_the_right_field():
    base = torch.zeros(1, 1, 4, 4, 2)
    insert = torch.zeros(1, 1, 4, 4, 2)
    base[..., 0, :, 0] = 2.0   # strong base gradient along the top row
    insert[..., :, 0, 1] = 1.0  # weak insert gradient along the left column
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1
    plain = composite_gradient(base, insert, mask)
    mixed = composite_gradient(base, insert, mask, mixed=True)
    assert torch.equal(plain[..., 2:, :, :], base[..., 2:, :, :])  # outside: the base
    assert torch.equal(plain[..., :2, :2, :], insert[..., :2, :2, :])  # inside: the insert
    assert torch.equal(mixed[..., 0, :2, :], base[..., 0, :2, :])  # inside, the base is stronger on row 0
    assert torch.equal(mixed[..., 1, 0, :], insert[..., 1, 0, :])  # and the insert on (1, 0)
    half = composite_gradient(base, insert, torch.full((4, 4), 0.5))
    assert torch.allclose(half, (base + insert) / 2)


def test_blend_without_and_with_mask():
    net = ip.Siren(out_features=1, **TINY)
    base, insert = smooth_image(seed=4), smooth_image(seed=5)
    f, hist = blend(base, insert, steps=30, net=net, lr=1e-3, progress=False)
    assert hist.alignment == "offset" and len(f) == 1
    out = f.render_derivatives(12, 12, ("value",)).value
    assert math.isclose(out.mean().item(), base.mean().item(), abs_tol=1e-4)  # the free constant is fixed
    mask = np.zeros((12, 12), dtype=bool)
    mask[3:9, 3:9] = True
    f, hist = blend(base, insert, mask, steps=60, net=net, lr=1e-3, mixed=True, progress=False)
    assert hist.alignment == "none" and hist.supervision == {"gradient": 1.0, "value": 1.0}
    out = f.render(12, 12)[0]
    outside = torch.from_numpy(~mask)
    assert (out - base)[:, outside].abs().mean() < 0.1  # anchored to the base outside the mask
    as_bytes = torch.from_numpy(mask.astype(np.uint8) * 255)  # an 8-bit mask, tensor or array, is 0/255
    g, _ = blend(base, insert, as_bytes, steps=2, net=net, lr=1e-3, progress=False, seed=0)
    h, _ = blend(base, insert, as_bytes.numpy(), steps=2, net=net, lr=1e-3, progress=False, seed=0)
    assert torch.equal(g.render(12, 12), h.render(12, 12))


def test_blend_validates_shapes():
    net = ip.Siren(out_features=1, **TINY)
    img = smooth_image()
    with pytest.raises(ValueError, match="same shape"):
        blend(img, smooth_image(h=10), steps=1, net=net, progress=False)
    with pytest.raises(ValueError, match=r"mask must have shape \(H, W\)"):
        blend(img, img, torch.ones(12, 11), steps=1, net=net, progress=False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        blend(img, img, torch.full((12, 12), 2.0), steps=1, net=net, progress=False)
    # a uint8 mask image (0 / 255) is read as 0 / 1
    f, _ = blend(img, img, np.full((12, 12), 255, dtype=np.uint8), steps=1, net=net, progress=False)
    assert len(f) == 1
