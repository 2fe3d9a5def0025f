"""The core: Siren, coordinates and Functions queries (values, gradients, Laplacians), checked against oracles."""
import math

import numpy as np
import pytest
import torch

import inrprior as ip
from inrprior.coords import coord_to_pixel, grid, pixel_to_coord
from inrprior.functions import Functions, query_params, query_params_autodiff

ALL = ("value", "gradient", "laplacian")
SUBSETS = [("value",), ("gradient",), ("laplacian",), ("value", "gradient"), ("value", "laplacian"),
           ("gradient", "laplacian"), ALL]


def random_functions(b=2, c=3, hidden=32, layers=1, w0=30.0, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = ip.Siren(2, c, hidden, layers, w0).to(dtype)
    return Functions(net, net.init_params(b, generator=torch.Generator().manual_seed(seed)))


def test_derivatives_match_central_finite_differences_float64():
    f = random_functions()
    x = torch.rand(16, 2, dtype=torch.float64) * 2 - 1
    q = f.query(x, ALL)
    assert q.value.shape == (2, 16, 3) and q.gradient.shape == (2, 16, 3, 2) and q.laplacian.shape == (2, 16, 3)

    def val(p):
        return f.query(p).value
    fd_grad, fd_lap = [], 0
    for axis, eps in ((0, 1e-6), (1, 1e-6)):
        e = torch.zeros(2, dtype=torch.float64)
        e[axis] = eps
        fd_grad.append((val(x + e) - val(x - e)) / (2 * eps))
        e[axis] = 1e-4
        fd_lap = fd_lap + (val(x + e) - 2 * val(x) + val(x - e)) / 1e-8
    fd_grad = torch.stack(fd_grad, dim=-1)
    assert (q.gradient - fd_grad).abs().max() < 1e-6 * q.gradient.abs().max()
    assert (q.laplacian - fd_lap).abs().max() < 1e-4 * q.laplacian.abs().max()


def test_single_sine_layer_matches_closed_form():
    # hidden_layers=0: raw = W1 sin(w0 (W0 x + b0)) + b1, colour = (raw + 1) / 2
    w0 = 7.0
    net = ip.Siren(2, 1, 3, 0, w0).double()
    g = torch.Generator().manual_seed(1)
    p = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in net.named_parameters()}
    W0, b0, W1, b1 = p["layers.0.weight"], p["layers.0.bias"], p["layers.1.weight"], p["layers.1.bias"]
    x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
    arg = w0 * (x @ W0.T + b0)  # (n, 3)
    value = ((torch.sin(arg) @ W1.T + b1) + 1) / 2  # (n, 1)
    grad = 0.5 * torch.einsum("nh,h,hk->nk", w0 * torch.cos(arg), W1[0], W0)  # (n, 2)
    lap = 0.5 * (-(w0 ** 2) * torch.sin(arg) * W0.square().sum(1)) @ W1[0]  # (n,)
    q = Functions(net, p).query(x, ALL)
    assert torch.allclose(q.value[0], value, atol=1e-12)
    assert torch.allclose(q.gradient[0, :, 0], grad, atol=1e-10)
    assert torch.allclose(q.laplacian[0, :, 0], lap, atol=1e-9)


def test_render_equals_query_on_the_pixel_grid():
    f = random_functions(c=2)
    h, w = 5, 7
    q = f.query(grid(h, w, dtype=torch.float64), ALL)
    img = f.render(h, w)
    assert img.shape == (2, 2, h, w)
    # pixel (j, i) = (column 3, row 4) is row 4 * w + 3 of the grid
    assert torch.allclose(img[:, :, 4, 3], q.value[:, 4 * w + 3].clamp(0, 1))
    # the value-only render and the derivative query run matmuls of different heights: equal within rounding
    assert torch.allclose(img, ip.coords.points_to_image(q.value, h, w).clamp(0, 1), atol=1e-14, rtol=0)
    r = f.render_derivatives(h, w, chunk=8)  # several chunks
    assert r.value.shape == (2, 2, h, w) and r.gradient.shape == (2, 2, h, w, 2) and r.laplacian.shape == (2, 2, h, w)
    assert torch.allclose(r.gradient[:, :, 4, 3], q.gradient[:, 4 * w + 3])
    assert torch.allclose(r.laplacian[:, :, 4, 3], q.laplacian[:, 4 * w + 3])


def test_pixel_to_coord_half_pixels_and_grid():
    # pixel 3.5, 2.5 of an 8 x 6 (w x h) image is the exact centre
    c = pixel_to_coord(3.5, 2.5, h=6, w=8)
    assert torch.allclose(c, torch.zeros(2))
    assert torch.allclose(pixel_to_coord(0, 0, h=6, w=8), torch.tensor([-1 + 1 / 8, -1 + 1 / 6]))
    g = grid(6, 8)
    assert torch.allclose(g[2 * 8 + 5], pixel_to_coord(5, 2, h=6, w=8))  # row 2, column 5
    px = torch.tensor([[3.5, 2.5], [0.0, 5.0]])
    assert torch.allclose(coord_to_pixel(pixel_to_coord(px[:, 0], px[:, 1], 6, 8), 6, 8), px)
    assert pixel_to_coord(torch.tensor(3.5, dtype=torch.float64), 2.5, 6, 8).dtype == torch.float64
    f = random_functions(b=1, c=1, w0=1.0)
    mid = f.query(c[None], ALL)  # a query between pixel centres, with derivatives
    assert mid.value.shape == (1, 1, 1) and torch.isfinite(mid.laplacian).all()


def test_sitzmann_initialization_bounds():
    net = ip.Siren(2, 3, 64, 2, w0=30.0)
    p = net.init_params()
    for name, t in p.items():
        i = int(name.split(".")[1])
        fan_in = net.layers[i].in_features
        bound = 1 / fan_in if i == 0 else math.sqrt(6 / fan_in) / 30.0
        assert t.abs().max() <= bound, name
        assert t.abs().max() > 0.5 * bound, name  # uniform on the full range, weights and biases alike
    stacked = net.init_params(2)
    assert stacked["layers.1.weight"].shape == (2, 64, 64)
    assert not torch.equal(stacked["layers.1.weight"][0], stacked["layers.1.weight"][1])
    assert net.config == dict(in_features=2, out_features=3, hidden_features=64, hidden_layers=2, w0=30.0)
    assert len(net.layers) == 4  # first sine layer, 2 hidden sine layers, linear output


def test_chunked_query_equals_unchunked():
    f = random_functions()
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    whole, parts = f.query(x, ALL), f.query(x, ALL, chunk=7)
    for name in ALL:
        assert torch.allclose(getattr(whole, name), getattr(parts, name), atol=1e-12), name


def test_shared_and_per_function_coordinates():
    f = random_functions(b=3)
    x = torch.rand(9, 2, dtype=torch.float64) * 2 - 1
    shared = f.query(x, ALL)
    same = f.query(x.expand(3, 9, 2), ALL)
    assert torch.allclose(shared.laplacian, same.laplacian, atol=1e-12)
    per = torch.rand(3, 9, 2, dtype=torch.float64) * 2 - 1
    q = f.query(per, ALL)
    for i in range(3):
        one = f[i].query(per[i], ALL)
        assert torch.allclose(q.gradient[i], one.gradient[0], atol=1e-12)
        assert torch.allclose(q.laplacian[i], one.laplacian[0], atol=1e-10)


def test_shared_params_with_per_function_biases():
    # shift modulations: shared weights, per-function sine-layer biases
    net = ip.Siren(2, 1, 16, 1, 30.0).double()
    base = net.init_params()
    params = dict(base)
    params["layers.1.bias"] = base["layers.1.bias"] + torch.randn(4, 16, dtype=torch.float64) * 0.1
    f = Functions(net, params)
    assert len(f) == 4
    x = torch.rand(5, 2, dtype=torch.float64)
    q = f.query(x, ALL)
    assert q.value.shape == (4, 5, 1)
    single = Functions(net, {**base, "layers.1.bias": params["layers.1.bias"][2]}).query(x, ALL)
    assert torch.allclose(q.laplacian[2], single.laplacian[0], atol=1e-10)


def test_gradients_flow_to_params_through_derivative_queries():
    f = random_functions(b=2)
    params = {k: v.clone().requires_grad_() for k, v in f.params.items()}
    x = torch.rand(6, 2, dtype=torch.float64)
    q = query_params(f.net, params, x, ("gradient", "laplacian"))
    (q.gradient.square().sum() + q.laplacian.square().sum()).backward()
    for k, v in params.items():
        if k == "layers.2.bias":  # the output bias cannot change a derivative
            assert v.grad is None or v.grad.abs().max() == 0
        else:
            assert v.grad is not None and v.grad.abs().max() > 0, k
    # and the parameter gradient is right: compare one entry with a finite difference
    k, idx, eps = "layers.1.weight", (0, 3, 5), 1e-6

    def loss(p):
        q = query_params(f.net, p, x, ("laplacian",))
        return q.laplacian.square().sum()
    plain = {k2: v.detach() for k2, v in params.items()}
    p1 = {**plain, k: plain[k].clone().requires_grad_()}
    (g,) = torch.autograd.grad(loss(p1), [p1[k]])
    plus, minus = dict(plain), dict(plain)
    plus[k], minus[k] = plain[k].clone(), plain[k].clone()
    plus[k][idx] += eps
    minus[k][idx] -= eps
    fd = (loss(plus) - loss(minus)) / (2 * eps)
    assert math.isclose(g[idx].item(), fd.item(), rel_tol=1e-5)


def layout(kind, hidden_layers, b=3, n=5, seed=0):
    """A float64 Siren, parameters (requiring grad) and coordinates in one of the layouts query_params accepts."""
    g = torch.Generator().manual_seed(seed)
    net = ip.Siren(2, 2, 8, hidden_layers, 30.0).double()
    if kind == "shift":  # shared weights, per-function sine-layer biases (HyperPrior's shift mode)
        params = net.init_params(generator=g)
        for k in net.sine_layer_names():
            params[k] = params[k] + 0.1 * torch.randn(b, *params[k].shape, generator=g, dtype=torch.float64)
    else:
        params = net.init_params(b, generator=g)
    shape = (b, n, 2) if kind == "per-function coords" else (n, 2)
    coords = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return net, {k: v.requires_grad_() for k, v in params.items()}, coords


@pytest.mark.parametrize("hidden_layers", [0, 3])
@pytest.mark.parametrize("kind", ["shared coords", "per-function coords", "shift"])
def test_query_params_matches_the_torch_func_oracle(kind, hidden_layers):
    # query_params runs the hand-written forward mode for a Siren; query_params_autodiff is torch.func's jvp
    net, params, coords = layout(kind, hidden_layers)
    for derivatives in SUBSETS:
        fast, ref = query_params(net, params, coords, derivatives), query_params_autodiff(net, params, coords,
                                                                                          derivatives)
        for name in ALL:
            a, b = getattr(fast, name), getattr(ref, name)
            assert (a is None) == (name not in derivatives) and (b is None) == (name not in derivatives), name
            if a is not None:
                assert a.shape == b.shape, (derivatives, name)
                assert torch.allclose(a, b, atol=1e-10, rtol=1e-10), (derivatives, name)

        def loss(q):  # a scalar of every field asked for
            return sum((getattr(q, name) ** 2).sum() for name in derivatives)
        g_fast = torch.autograd.grad(loss(fast), list(params.values()), allow_unused=True)
        g_ref = torch.autograd.grad(loss(ref), list(params.values()), allow_unused=True)
        for k, a, b in zip(params, g_fast, g_ref):
            a = torch.zeros_like(params[k]) if a is None else a  # e.g. the output bias of a derivative-only loss
            b = torch.zeros_like(params[k]) if b is None else b
            assert torch.allclose(a, b, atol=1e-9, rtol=1e-9), (derivatives, k)


def test_query_params_of_a_module_that_is_not_a_siren_uses_torch_func():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.rand(6, 2, dtype=torch.float64)
    q = query_params(net, params, x, ALL)
    assert q.value.shape == (1, 6, 1) and q.gradient.shape == (1, 6, 1, 2) and q.laplacian.shape == (1, 6, 1)
    assert torch.allclose(q.value[0], (net(x) + 1) / 2)


def test_bad_coords_and_params_raise_clear_errors():
    f = random_functions(b=2)
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 2\) or \(B, N, 2\)"):
        f.query(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        f.query(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="batch size 3 but there are 2 functions"):
        f.query(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="unknown derivative"):
        f.query(torch.zeros(4, 2), ("hessian",))
    other = ip.Siren(2, 3, 16, 1, 30.0)  # narrower than the params
    with pytest.raises(ValueError, match="layers.0.weight"):
        Functions(other, f.params)
    with pytest.raises(ValueError, match="missing"):
        Functions(ip.Siren(2, 3, 32, 2, 30.0), f.params)


def test_2048_render_with_gradients_runs_chunked():
    f = random_functions(b=1, c=1, hidden=4, layers=0, dtype=torch.float32)
    r = f.render_derivatives(2048, 2048, ("value", "gradient"), chunk=1 << 18)  # 16 chunks
    assert r.value.shape == (1, 1, 2048, 2048) and r.gradient.shape == (1, 1, 2048, 2048, 2)
    assert r.laplacian is None and torch.isfinite(r.gradient).all()
    q = f.query(pixel_to_coord(1000.0, 2000.0, 2048, 2048)[None], ("gradient",))
    assert torch.allclose(r.gradient[0, :, 2000, 1000], q.gradient[0, 0], atol=1e-5)


def test_init_params_draws_only_from_its_generator():
    net = ip.Siren(2, 1, 8, 1)
    before = torch.random.get_rng_state()
    a = net.init_params(2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state stays where it was
    b = net.init_params(2, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["layers.0.weight"][0], a["layers.0.weight"][1])
    net.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(v, a[k][0]) for k, v in net.state_dict().items())  # one initialization, two entry points


def test_functions_to_and_indexing_leave_the_shared_net_alone():
    f = random_functions(b=2, dtype=torch.float32)
    g = f.to(torch.float64)
    assert g.dtype == torch.float64 and next(f.net.parameters()).dtype == torch.float32  # a prior's net stays
    assert torch.allclose(g.query(grid(3, 3)).value.float(), f.query(grid(3, 3)).value, atol=1e-5)
    assert len(f[-1]) == 1 and torch.equal(f[-1].params["layers.0.bias"], f[1].params["layers.0.bias"])
    with pytest.raises(IndexError, match="out of range"):
        f[-3]
    back = f[::-1]  # any step, numpy integers and index lists too; the order is the one asked for
    assert torch.equal(back.params["layers.0.bias"], f.params["layers.0.bias"].flip(0))
    assert torch.equal(f[np.int64(1)].params["layers.0.bias"], f[[1]].params["layers.0.bias"])
    with pytest.raises(IndexError, match="selects none of the 2 functions"):
        f[5:9]
    with pytest.raises(IndexError, match="cannot index 2 functions"):
        f[[0, 7]]
