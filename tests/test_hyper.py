"""HyperPrior: shapes by the SIREN's own names, set-encoder invariances, shift mode, training, refinement, sampling,
saving, and errors. Tiny sizes: 2x16 SIRENs, 8x8 images."""
import math

import pytest
import torch

import inrprior as ip
from inrprior import io
from inrprior.coords import image_to_points, pixel_to_coord
from inrprior.functions import Functions
from inrprior.hyper import HyperConfig, HyperPrior
from inrprior.siren import Siren, param_shapes
from inrprior.train import ShardedGenerator

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


SMALL = dict(hidden=32, latent_dim=8, head_width=8, encoder_layers=2, fourier_bands=3, image_size=8, min_context=4)


def make(output="weights", encoder="set", channels=1, seed=0, **kw):
    torch.manual_seed(seed)
    return HyperPrior(Siren(2, channels, 16, 2), **{**SMALL, "output": output, "encoder": encoder, **kw})


def images(b=4, c=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    a = torch.rand(b, c, 1, 1, generator=g)
    return (0.5 + 0.4 * torch.sin(3 * (xs * a + ys * (1 - a)) + 6 * a)).clamp(0, 1)  # smooth, per-image varying


def context(x, n, seed=0):
    coords, values = image_to_points(x)
    idx = torch.rand(x.shape[0], coords.shape[0], generator=torch.Generator().manual_seed(seed)).argsort(1)[:, :n]
    return coords[idx], values.gather(1, idx[..., None].expand(-1, -1, x.shape[1]))


def context_mse(f, coords, values):
    return float(((f.query(coords).value - values) ** 2).mean())


@pytest.mark.parametrize("output", ["weights", "shift"])
def test_generated_params_use_the_siren_names_and_shapes(output):
    prior = make(output)
    shapes = param_shapes(prior.net)
    params = prior.generate(torch.randn(3, 8))
    assert set(params) == set(shapes)
    for k, shape in shapes.items():
        batched = output == "weights" or k in prior.net.sine_layer_names()
        assert tuple(params[k].shape) == ((3, *shape) if batched else tuple(shape)), k
    # a fresh prior generates SIRENs near the learned (Sitzmann-initialized) base: small offsets
    k = "layers.1.weight" if output == "weights" else "layers.1.bias"
    base = dict(prior.net.named_parameters())[k].detach()
    offset = (params[k] - base).detach()
    assert 0 < float(offset.abs().max()) < (float(base.abs().max()) if output == "weights" else 0.5 / prior.net.w0)


def test_shift_mode_shares_weights_and_only_biases_differ():
    prior = make("shift")
    f = prior.adapt(images(3))
    assert len(f) == 3
    for k, v in f.params.items():
        if k in prior.net.sine_layer_names():
            assert v.shape[0] == 3 and not torch.equal(v[0], v[1])
        else:
            assert torch.equal(v, dict(prior.net.named_parameters())[k].detach())
    assert len(prior.hyper.heads) == len(prior.net.sine_layer_names())


def test_set_encoder_is_order_invariant_and_masked_pooling_ignores_padding():
    prior = make()
    coords, values = context(images(2), 10)
    mu, logvar = prior.encode(coords, values)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    mu_p, logvar_p = prior.encode(coords[:, perm], values[:, perm])
    torch.testing.assert_close(mu_p, mu)
    torch.testing.assert_close(logvar_p, logvar)
    pad_c = torch.cat([coords, torch.rand(2, 5, 2) * 2 - 1], 1)
    pad_v = torch.cat([values, torch.rand(2, 5, 1)], 1)
    mask = torch.cat([torch.ones(2, 10), torch.zeros(2, 5)], 1)
    mu_m, _ = prior.encode(pad_c, pad_v, mask)
    torch.testing.assert_close(mu_m, mu)
    assert not torch.allclose(prior.encode(pad_c, pad_v)[0], mu)  # without the mask the padding counts
    f_m = prior.adapt_context(pad_c, pad_v, mask=mask)
    torch.testing.assert_close(f_m.render(8, 8), prior.adapt_context(coords, values).render(8, 8))


@pytest.mark.parametrize("output,encoder", [("weights", "set"), ("shift", "set"), ("weights", "conv"),
                                            ("weights", "grid"), ("linear", "posterior")])
def test_training_steps_lower_the_reconstruction_error(output, encoder):
    prior, x = make(output, encoder), images(8)

    def error():
        return float(((prior.adapt(x).render(8, 8) - x) ** 2).mean())
    before = error()
    opt = torch.optim.Adam(prior.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, metrics = prior(x, g)
        assert set(metrics) == {"loss", "mse", "psnr", "kl", "context"} and 4 <= metrics["context"] <= 64
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < 0.75 * before


@pytest.mark.parametrize("refine", ["params", "shift", "latent"])
def test_refinement_steps_lower_the_context_error(refine):
    prior = make(refine=refine)
    coords, values = context(images(3), 20)
    one_pass = context_mse(prior.adapt_context(coords, values), coords, values)
    refined = context_mse(prior.adapt_context(coords, values, steps=3), coords, values)
    assert refined < one_pass
    assert not any(p.grad is not None for p in prior.parameters())  # the prior itself is untouched


def test_forward_is_reproducible_and_agrees_across_ddp_shards():
    prior, x = make(flip=True), images(4)  # per-image draws: context pixels, latent noise, flips
    loss_a, _ = prior(x, torch.Generator().manual_seed(5))
    loss_b, _ = prior(x, torch.Generator().manual_seed(5))
    assert float(loss_a.detach()) == float(loss_b.detach())
    halves = []
    for start in (0, 2):  # two "processes" with the same seed, each holding half of the global batch of 4
        g = ShardedGenerator()
        g.manual_seed(5)
        g.shard = (start, start + 2, 4)
        halves.append(prior(x[start:start + 2], g)[0])
    torch.testing.assert_close((halves[0] + halves[1]) / 2, loss_a)


@pytest.mark.parametrize("density", ["standard", "gaussian", "gmm"])
def test_sample_and_interpolate_give_functions(density):
    prior, x = make(), images(6)
    prior.fit_density(x, kind=density, **({"n_components": 2} if density == "gmm" else {}))
    f = prior.sample(5, generator=torch.Generator().manual_seed(0))
    assert isinstance(f, Functions) and f.render(8, 8).shape == (5, 1, 8, 8)
    again = prior.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.render(8, 8), f.render(8, 8))
    q = f.query(torch.rand(7, 2) * 2 - 1, ("value", "gradient", "laplacian"))
    assert q.gradient.shape == (5, 7, 1, 2) and q.laplacian.shape == (5, 7, 1)
    line = prior.interpolate(x[0], x[1], n=4)
    ends = prior.adapt(x[:2]).render(8, 8)
    torch.testing.assert_close(line.render(8, 8)[[0, 3]], ends)


@pytest.mark.parametrize("output,encoder", [("weights", "set"), ("shift", "conv"), ("weights", "grid"),
                                            ("linear", "posterior")])
def test_state_roundtrip_gives_identical_outputs(tmp_path, output, encoder):
    prior, x = make(output, encoder, channels=3), images(4, c=3)
    prior.fit_density(x, kind="gaussian")
    prior.save(tmp_path / "prior")
    loaded = io.load_prior(tmp_path / "prior")
    assert isinstance(loaded, HyperPrior) and loaded.config == prior.config
    torch.testing.assert_close(loaded.adapt(x, steps=2).render(8, 8), prior.adapt(x, steps=2).render(8, 8),
                               rtol=0, atol=0)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(loaded.sample(3, g()).render(8, 8), prior.sample(3, g()).render(8, 8), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x, g())[0], prior(x, g())[0], rtol=0, atol=0)


def test_conv_encoder_reads_partial_context():
    prior, x = make(encoder="conv"), images(2)
    coords, values = context(x, 12)
    f = prior.adapt_context(coords, values, steps=1)
    assert f.render(8, 8).shape == (2, 1, 8, 8)
    # permuting the points changes nothing; a mask drops padded points
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.encode(coords[:, perm], values[:, perm])[0], prior.encode(coords, values)[0])
    mask = torch.ones(2, 12)
    mask[:, 6:] = 0
    torch.testing.assert_close(prior.encode(coords, values, mask)[0], prior.encode(coords[:, :6], values[:, :6])[0])


def test_grid_encoder_reads_its_grids_at_any_coordinate():
    prior, x = make(encoder="grid"), images(2)
    enc = prior.encoder
    assert torch.allclose(enc.features[0, 0], torch.ones(8, 8))  # the DCT init: feature 0 is the constant
    coords, values = context(x, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.encode(coords[:, perm], values[:, perm])[0], prior.encode(coords, values)[0])
    mask = torch.ones(2, 12)
    mask[:, 6:] = 0
    torch.testing.assert_close(prior.encode(coords, values, mask)[0], prior.encode(coords[:, :6], values[:, :6])[0])
    # a point between pixel centres reads the bilinear mix of the four grid cells around it
    with torch.no_grad():
        enc.features.normal_()
    between = pixel_to_coord(3.5, 2.5, 8, 8)[None, None]  # (1, 1, 2)
    read = torch.nn.functional.grid_sample(enc.features, between[:, :, None], align_corners=False)[0, :, 0, 0]
    expected = enc.features[0, :, 2:4, 3:5].mean((1, 2))
    torch.testing.assert_close(read, expected)
    # refinement from a one-pass guess still works
    assert prior.adapt_context(coords, values, steps=2).render(8, 8).shape == (2, 1, 8, 8)


def test_clear_errors():
    prior = make()
    coords, values = context(images(2), 5)
    with pytest.raises(ValueError, match="at least 1 context pixel"):
        prior.adapt_context(coords[:, :0], values[:, :0])
    with pytest.raises(ValueError, match="at least 1 context pixel"):
        prior.adapt_context(coords, values, mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"values must have shape \(B, N, 1\)"):
        prior.adapt_context(coords, values.expand(-1, -1, 3))
    with pytest.raises(ValueError, match="coords"):
        prior.adapt_context(coords[:, :3], values)
    with pytest.raises(ValueError, match="NaN"):
        prior.adapt_context(coords, values.masked_fill(torch.ones_like(values, dtype=torch.bool), math.nan))
    with pytest.raises(ValueError, match="NaN"):
        prior.adapt_context(coords.clone().fill_(math.nan), values)
    with pytest.raises(ValueError, match=r"images: 3 channels, but the SIREN outputs 1"):
        prior(torch.rand(2, 3, 8, 8))
    loss, _ = prior(torch.rand(2, 1, 8, 8, dtype=torch.float64))  # float64 images train a float32 prior
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got 1.7"):
        prior.adapt(torch.rand(1, 8, 8), steps=1.7)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        prior.latents(torch.rand(2, 1, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="latent_dim must be an integer, got 2.5"):
        make(latent_dim=2.5)
    with pytest.raises(ValueError, match="NaN"):
        prior.adapt(torch.full((1, 8, 8), math.nan))
    with pytest.raises(ValueError, match="encoder must be one of"):
        HyperConfig(encoder="transformer")
    with pytest.raises(TypeError, match="latent_size"):
        make(latent_size=4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        prior.sample(0)


def test_trains_with_the_shared_training_loop(tmp_path):
    from inrprior.train import train
    prior, x = make("shift"), images(6)
    train(prior, x, steps=4, out=tmp_path, batch_size=4, lr=1e-3, eval_dataset=x[:2], eval_every=2,
          checkpoint_every=2, progress=False, density="gaussian")
    loaded = io.load_prior(tmp_path / "prior.safetensors")
    assert loaded.density is not None and len(loaded.sample(2)) == 2
    (tmp_path / "images" / "samples.png").unlink()
    resumed = make("shift")
    train(resumed, x, steps=4, out=tmp_path, batch_size=4, lr=1e-3, checkpoint_every=2, progress=False,
          resume=True, density=None)
    assert (tmp_path / "images" / "samples.png").is_file()  # density None: a HyperPrior still samples N(0, I)
    for (k, a), b in zip(loaded.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("refine", ["params", "shift", "latent"])
def test_meta_learned_refinement_trains_its_step_sizes(refine):
    lr = {"latent": 1e3, "shift": 0.3, "params": 1e-1}[refine]  # SGD steps on per-function mean errors
    prior = make("shift" if refine == "shift" else "weights", refine=refine, train_refine_steps=2, refine_lr=lr)
    x = images(4)
    start = {k: v.detach().clone() for k, v in prior.step_size.items()}
    loss, metrics = prior(x, torch.Generator().manual_seed(0))
    assert metrics["mse_refined"] < metrics["mse"] or refine == "latent"  # a fresh decoder barely depends on z
    opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert all(not torch.equal(v, start[k]) for k, v in prior.step_size.items())
    if refine != "latent":
        coords, values = context(x, 20)
        one_pass = context_mse(prior.adapt_context(coords, values), coords, values)
        assert context_mse(prior.adapt_context(coords, values, steps=2), coords, values) < 0.9 * one_pass


def test_refining_another_target_than_the_learned_one_falls_back_to_adam():
    """Learned step sizes exist only for the trained target; refining the latent of such a prior uses Adam."""
    prior, x = make(refine="params", train_refine_steps=1), images(2)
    coords, values = context(x, 20)
    prior.cfg = HyperConfig(**{**prior.config["hyper"], "refine": "latent"})
    one_pass = context_mse(prior.adapt_context(coords, values), coords, values)
    assert context_mse(prior.adapt_context(coords, values, steps=3), coords, values) != one_pass


def test_auto_refinement_moves_only_the_latent_when_few_pixels_are_known():
    prior, x = make(refine_min_context=30), images(2)
    for n, target in ((20, "latent"), (40, "params")):
        coords, values = context(x, n)
        auto = prior.adapt_context(coords, values, steps=2).render(8, 8)
        fixed = make(refine=target).adapt_context(coords, values, steps=2).render(8, 8)
        torch.testing.assert_close(auto, fixed, rtol=0, atol=0)


def test_linear_output_generates_only_the_output_layer_linearly_in_the_latent():
    prior = make("linear", "posterior")
    last = f"layers.{len(prior.net.layers) - 1}."
    assert prior.hyper.names == [last + "weight", last + "bias"]
    coords = torch.rand(9, 2) * 2 - 1
    out = lambda z: Functions(prior.net, prior.generate(z)).query(coords).value  # noqa: E731
    z1, z2 = torch.randn(1, 8), torch.randn(1, 8)
    with torch.no_grad():  # affine in z: f(a z1 + (1 - a) z2) = a f(z1) + (1 - a) f(z2)
        torch.testing.assert_close(out(0.3 * z1 + 0.7 * z2), 0.3 * out(z1) + 0.7 * out(z2), atol=1e-6, rtol=0)
        assert not torch.allclose(out(z1), out(z2))


def test_posterior_encoder_is_exact_bayesian_linear_regression():
    """The closed form against a brute force in float64: the Jacobian of the generated raw output by autodiff, and
    the posterior of z ~ N(0, I), y = m + J z + N(0, noise) by the textbook covariance formulas."""
    prior = make("linear", "posterior").double()
    with torch.no_grad():
        prior.log_noise.fill_(math.log(0.05))
    coords, values = context(images(2).double(), 12)
    mu, logvar = prior.encode(coords, values)
    for i in range(2):
        raw = lambda z: 2 * Functions(prior.net, prior.generate(z[None])).query(coords[i]).value[0, :, 0] - 1  # noqa
        z0 = torch.zeros(8, dtype=torch.float64)
        jac = torch.func.jacfwd(raw)(z0).detach()  # (n, d)
        m = raw(z0).detach()
        cov_y = jac @ jac.T + 0.05 * torch.eye(12, dtype=torch.float64)
        gain = jac.T @ torch.linalg.inv(cov_y)  # Cov(z, y) Cov(y)^-1
        torch.testing.assert_close(mu[i], gain @ (2 * values[i, :, 0] - 1 - m), atol=1e-10, rtol=1e-8)
        post_cov = torch.eye(8, dtype=torch.float64) - gain @ jac
        torch.testing.assert_close(logvar[i], post_cov.diagonal().log(), atol=1e-10, rtol=1e-8)
    pad_c = torch.cat([coords, torch.rand(2, 5, 2, dtype=torch.float64) * 2 - 1], 1)
    pad_v = torch.cat([values, torch.rand(2, 5, 1, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(2, 12), torch.zeros(2, 5)], 1).double()
    torch.testing.assert_close(prior.encode(pad_c, pad_v, mask)[0], mu)  # padding drops out of the sums


def test_posterior_training_kl_is_the_full_covariance_gaussian_kl():
    """forward()'s KL term equals torch.distributions' KL(N(mu, P^-1) || N(0, I)) for the same context."""
    prior, x = make("linear", "posterior", min_context=64).double(), images(3).double()
    _, metrics = prior(x, torch.Generator().manual_seed(0))  # min_context = all 64 pixels: the context is x
    coords, values = image_to_points(x)
    mu, chol = prior._posterior(coords.expand(3, -1, -1), values)
    q = torch.distributions.MultivariateNormal(mu, precision_matrix=chol @ chol.mT)
    p = torch.distributions.MultivariateNormal(torch.zeros(8, dtype=torch.float64), torch.eye(8, dtype=torch.float64))
    assert metrics["kl"] == pytest.approx(float(torch.distributions.kl_divergence(q, p).mean().detach()), rel=1e-9)


def test_posterior_encoder_needs_the_linear_output():
    with pytest.raises(ValueError, match='encoder="posterior" needs output="linear"'):
        HyperConfig(encoder="posterior", output="weights")
    with pytest.raises(ValueError, match="noise_init must be positive"):
        HyperConfig(output="linear", encoder="posterior", noise_init=0.0)


def test_refinement_target_is_chosen_per_image_in_a_masked_batch():
    torch.manual_seed(0)
    prior = HyperPrior(ip.Siren(2, 1, 16, 1), hidden=8, head_width=8, latent_dim=4, image_size=8)
    coords, values = ip.grid(8, 8)[:60], torch.rand(2, 60, 1)
    mask = torch.ones(2, 60)
    mask[1, 10:] = 0  # image 1 has 10 known pixels (< refine_min_context: its latent only is refined)
    batched = prior.adapt_context(coords, values, steps=3, mask=mask).render(8, 8)
    alone = [prior.adapt_context(coords, values[:1], steps=3).render(8, 8)[0],
             prior.adapt_context(coords[:10], values[1:, :10], steps=3).render(8, 8)[0]]
    for i in range(2):  # each image's result is its own, whatever else is in the batch
        torch.testing.assert_close(batched[i], alone[i], rtol=0, atol=1e-6)
