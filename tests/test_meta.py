"""MetaPrior: the vectorized inner loop against oracles (higher, a per-task loop), the algorithms, the latent variant,
fast fitting, sampling, saving, and errors. Tiny SIRENs (2x32) and 8x8 images; float64 where gradients are compared."""
import math

import pytest
import torch

import inrprior as ip
from inrprior import io
from inrprior.meta import LATENT, MetaPrior, adapt, adapt_tasks, task_loss
from inrprior.train import ShardedGenerator


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def make(dtype=torch.float64, seed=0, channels=3, **kw):
    torch.manual_seed(seed)
    net = ip.Siren(2, channels, 32, 2).to(dtype)
    return MetaPrior(net, **kw)


def smooth_images(b=3, c=3, h=8, w=8, seed=1, dtype=torch.float64):
    """Smooth random images (low frequencies), which a few gradient steps can fit."""
    g = torch.Generator().manual_seed(seed)
    xy = ip.grid(h, w).to(dtype)  # (n, 2)
    freq = torch.randn(b, c, 2, 2, generator=g, dtype=dtype)
    phase = torch.rand(b, c, 2, generator=g, dtype=dtype) * 6.28
    v = 0.5 + 0.2 * torch.sin(torch.einsum("bckd,nd->bckn", freq, xy) + phase[..., None]).sum(2)  # (b, c, n)
    return v.reshape(b, c, h, w).clamp(0, 1)


def grads(loss, prior):
    return torch.autograd.grad(loss, list(prior.parameters()), allow_unused=True)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("meta_sgd", [False, True])
@pytest.mark.parametrize("latent_dim", [None, 4])
def test_vmap_matches_higher_oracle(algorithm, meta_sgd, latent_dim):
    prior = make(algorithm=algorithm, meta_sgd=meta_sgd, latent_dim=latent_dim, inner_lr=0.1, context_fraction=0.5)
    if meta_sgd:  # distinct step sizes per entry, so that a mix-up of entries would show
        with torch.no_grad():
            for lr in prior.inner_lrs:
                lr.uniform_(0.05, 0.2)
    images = smooth_images()
    loss, metrics = prior(images, torch.Generator().manual_seed(3))
    ref, ref_metrics = prior.reference_forward(images, torch.Generator().manual_seed(3))
    assert torch.allclose(loss, ref, atol=1e-10)
    for a, b in zip(grads(loss, prior), grads(ref, prior)):
        assert a is not None and b is not None
        assert (a - b).abs().max() < 1e-6 * max(1.0, b.abs().max().item())
    assert math.isclose(metrics["mse"], ref_metrics["mse"], rel_tol=1e-9)


def test_first_and_second_order_differ():
    images = smooth_images()
    p2 = make(algorithm="maml", inner_lr=0.1)
    p1 = make(algorithm="fomaml", inner_lr=0.1)
    g2, g1 = grads(p2(images)[0], p2), grads(p1(images)[0], p1)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) > 1e-6


def test_vmap_matches_per_task_python_loop():
    prior = make(inner_lr=0.1)
    images = smooth_images(b=3)
    coords, values = ip.coords.image_to_points(images)
    params, keys = prior.meta_params(), prior.adapt_keys
    batched, losses = adapt_tasks(prior.net, params, coords, values, 2, 0.1, keys)
    loop_loss = 0
    for t in range(3):
        one = adapt(prior.net, params, coords, values[t], 2, 0.1, keys)
        for k in keys:
            assert torch.allclose(batched[k][t], one[k], atol=1e-12)
        assert torch.allclose(losses[t, 0], task_loss(prior.net, params, coords, values[t]))
        loop_loss = loop_loss + task_loss(prior.net, one, coords, values[t]) / 3
    prior.cfg.inner_steps = 2
    loss, _ = prior(images)
    for a, b in zip(grads(loss, prior), grads(loop_loss, prior)):
        assert torch.allclose(a, b, atol=1e-10)


def test_adapt_is_pure():
    prior = make()
    params = {k: v.detach().clone() for k, v in prior.meta_params().items()}
    before = {k: v.clone() for k, v in params.items()}
    coords, values = ip.coords.image_to_points(smooth_images(b=1))
    out = adapt(prior.net, params, coords, values[0], 2, 0.1, prior.adapt_keys)
    assert out is not params and all(torch.equal(params[k], before[k]) for k in params)
    assert any(not torch.equal(out[k], params[k]) for k in params)


def test_reptile_surrogate_gradient_is_params_minus_adapted():
    prior = make(algorithm="reptile", inner_lr=0.1)
    images = smooth_images()
    loss, _ = prior(images)
    g = dict(zip([k for k, _ in prior.named_parameters()], grads(loss, prior)))
    coords, values = ip.coords.image_to_points(images)
    params = {k: v.detach() for k, v in prior.meta_params().items()}
    adapted, _ = adapt_tasks(prior.net, params, coords, values, 3, 0.1, prior.adapt_keys, first_order=True)
    for k in prior.adapt_keys:
        assert torch.allclose(g[f"net.{k}"], params[k] - adapted[k].mean(0), atol=1e-12)


def test_checkpointing_gives_the_same_gradient():
    for latent_dim in (None, 4):
        plain = make(latent_dim=latent_dim, meta_sgd=True, inner_lr=0.1)
        ckpt = make(latent_dim=latent_dim, meta_sgd=True, inner_lr=0.1, checkpoint=True)
        images = smooth_images()
        for prior in (plain, ckpt):
            prior(images)[0].backward()
        for a, b in zip(plain.parameters(), ckpt.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_latent_variant_adapts_only_the_latent():
    prior = make(latent_dim=5, inner_lr=0.1)
    assert prior.adapt_keys == (LATENT,)
    images = smooth_images()
    f = prior.adapt(images, steps=2)
    theta = dict(prior.net.named_parameters())
    sines = set(prior.net.sine_layer_names())
    for k, v in f.params.items():
        if k in sines:  # per-function biases b + M z
            assert v.shape == (3, *theta[k].shape) and not torch.allclose(v, theta[k].expand_as(v))
        else:  # shared and untouched
            assert v.shape == theta[k].shape and torch.equal(v, theta[k].detach())
    assert torch.allclose(prior.codes(images, steps=0), torch.zeros(3, 5, dtype=torch.float64))


def fit_mse(f, images):
    return (f.render(*images.shape[-2:]) - images).pow(2).mean().item()


@pytest.mark.parametrize("latent_dim", [None, 8])
def test_more_adaptation_steps_than_training_lower_the_loss(latent_dim):
    prior = make(latent_dim=latent_dim, inner_lr=0.5 if latent_dim else 0.05, inner_steps=2)
    images = smooth_images()
    errors = [fit_mse(prior.adapt(images, steps=s), images) for s in (0, 2, 10)]
    assert errors[2] < errors[1] < errors[0]


def test_adapt_context_fits_the_context_and_accepts_shared_coords():
    prior = make(inner_lr=0.05)
    images = smooth_images(b=2)
    coords, values = ip.coords.image_to_points(images)
    idx = torch.arange(0, 64, 3)
    f = prior.adapt_context(coords[idx].expand(2, -1, -1), values[:, idx], steps=10)
    g = prior.adapt_context(coords[idx], values[:, idx], steps=10)
    assert len(f) == 2 and torch.allclose(f.query(coords).value, g.query(coords).value)
    before = (prior.adapt_context(coords[idx], values[:, idx], steps=0).query(coords[idx]).value - values[:, idx])
    after = f.query(coords[idx]).value - values[:, idx]
    assert after.pow(2).mean() < before.pow(2).mean()
    assert f.render(16, 16).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("latent_dim,kind", [(None, "gaussian"), (6, "gaussian"), (6, "gmm")])
def test_sample_after_fit_density(latent_dim, kind):
    prior = make(latent_dim=latent_dim, inner_lr=0.1)
    images = smooth_images(b=6)
    with pytest.raises(RuntimeError, match="fit_density"):
        prior.sample(2)
    prior.fit_density(images, kind=kind, **({"n_components": 2} if kind == "gmm" else {}))
    f = prior.sample(4, generator=torch.Generator().manual_seed(0))
    assert isinstance(f, ip.Functions) and len(f) == 4
    assert f.render(8, 8).shape == (4, 3, 8, 8)
    assert torch.isfinite(f.query(ip.grid(4, 4).double(), ("value", "gradient")).gradient).all()
    again = prior.sample(4, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(f.params[k], again.params[k]) for k in f.params)


def test_state_roundtrip_gives_identical_samples_and_adaptations(tmp_path):
    prior = make(latent_dim=4, meta_sgd=True, inner_lr=0.1, context_fraction=0.5)
    images = smooth_images(b=5)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
    for _ in range(2):  # move away from the initialization, so that a missed tensor would show
        opt.zero_grad()
        prior(images[:3], torch.Generator().manual_seed(0))[0].backward()
        opt.step()
    prior.fit_density(images, kind="gmm", n_components=2)
    for loaded in (MetaPrior.from_state(*prior.to_state()), io.load_prior(prior.save(tmp_path / "prior"))):
        assert loaded.config == prior.config
        a = prior.sample(3, generator=torch.Generator().manual_seed(5))
        b = loaded.sample(3, generator=torch.Generator().manual_seed(5))
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
        a, b = prior.adapt(images, steps=4), loaded.adapt(images, steps=4)
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
        assert torch.equal(prior(images, torch.Generator().manual_seed(1))[0],
                           loaded(images, torch.Generator().manual_seed(1))[0])


def test_meta_sgd_step_sizes_stay_non_negative():
    prior = make(meta_sgd=True, inner_lr=0.01)
    images = smooth_images()
    opt = torch.optim.SGD(prior.parameters(), lr=1e3)  # huge steps push some step sizes below zero
    for _ in range(2):
        opt.zero_grad()
        prior(images)[0].backward()
        opt.step()
    assert any((lr < 0).any() for lr in prior.inner_lrs)  # the optimizer did overshoot ...
    assert all((r >= 0).all() for r in prior.inner_rates().values())  # ... but the used sizes are clamped
    prior(images)
    assert all((lr >= 0).all() for lr in prior.inner_lrs)  # and forward projects the parameters back
    assert all((v >= 0).all() for k, v in prior.to_state()[0].items() if k.startswith("model.inner_lrs"))


def test_context_fraction_respects_generator_and_shards():
    prior = make(inner_lr=0.1, context_fraction=0.25)
    images = smooth_images(b=4)
    coords, values = ip.coords.image_to_points(images)
    full_c, full_v = prior._support(coords, values, torch.Generator().manual_seed(2))
    assert full_c.shape == (4, 16, 2) and full_v.shape == (4, 16, 3)
    g = ShardedGenerator()
    g.manual_seed(2)
    g.shard = (1, 3, 4)  # this process holds images 1 and 2 of a global batch of 4
    part_c, part_v = prior._support(coords, values[1:3], g)
    assert torch.equal(part_c, full_c[1:3]) and torch.equal(part_v, full_v[1:3])


def test_errors():
    prior = make(channels=1)
    with pytest.raises(ValueError, match="channels"):
        prior(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        prior.adapt(torch.rand(8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="N=0"):
        prior.adapt_context(torch.zeros(2, 0, 2), torch.zeros(2, 0, 1))
    with pytest.raises(ValueError, match=r"\(B, N, 1\)"):
        prior.adapt_context(torch.zeros(2, 5, 2), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="coords hold"):
        prior.adapt_context(torch.zeros(2, 4, 2), torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match="batch size"):
        prior.adapt_context(torch.zeros(3, 5, 2), torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match="NaN"):
        prior.adapt_context(torch.zeros(2, 5, 2), torch.full((2, 5, 1), float("nan")))
    with pytest.raises(ValueError, match="steps"):
        prior.adapt(torch.rand(1, 8, 8), steps=-1)
    with pytest.raises(ValueError, match="gmm"):
        prior.fit_density(torch.rand(4, 1, 8, 8), kind="gmm")
    with pytest.raises(ValueError, match="reptile"):
        make(algorithm="reptile", latent_dim=4)
    with pytest.raises(ValueError, match="algorithm"):
        make(algorithm="sgd")
    with pytest.raises(ValueError, match="context_fraction"):
        make(context_fraction=0.0)
    with pytest.raises(TypeError, match="Siren"):
        MetaPrior(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got 1.7"):
        prior.adapt(torch.rand(1, 8, 8), steps=1.7)  # not silently 1 step
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        prior.adapt(torch.rand(1, 8, 8), chunk=0)
    with pytest.raises(ValueError, match="inner_steps must be an integer, got True"):
        make(inner_steps=True)
    with pytest.raises(ValueError, match="inner_lr must be a finite number, got inf"):
        make(inner_lr=float("inf"))


def test_train_loop_resumes_exactly_with_random_context(tmp_path):
    from inrprior.train import train

    images = smooth_images(b=6, dtype=torch.float32)

    def run(out, steps, resume=False, prior=None):
        prior = prior or make(dtype=torch.float32, meta_sgd=True, context_fraction=0.5, inner_lr=0.05)
        return train(prior, images, steps, out, batch_size=2, lr=1e-3, checkpoint_every=2, progress=False,
                     density=None, resume=resume, device="cpu")

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
