"""Densities for sampling: fits recover known distributions, sampling is reproducible, state round-trips exactly."""
import pytest
import torch

from inrprior.density import (Gaussian, GaussianMixtureDensity, PCAGaussian, density_from_state, make_density)


def correlated(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    L = torch.tensor([[1.0, 0, 0], [0.8, 0.5, 0], [-0.3, 0.2, 0.3]], dtype=torch.float64)
    return mean + torch.randn(n, 3, generator=g, dtype=torch.float64) @ L.T, mean, L @ L.T


def test_gaussian_recovers_mean_and_covariance():
    x, mean, cov = correlated()
    d = Gaussian().fit(x)
    s = d.sample(20000, generator=torch.Generator().manual_seed(1))
    assert s.shape == (20000, 3) and s.dtype == torch.float64
    assert torch.allclose(s.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.06)


def test_gaussian_with_fewer_rows_than_dimensions_is_regularized():
    x = torch.randn(5, 40)
    s = Gaussian().fit(x).sample(3)
    assert s.shape == (3, 40) and torch.isfinite(s).all()


def test_gmm_finds_separated_modes():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 2, generator=g) * 0.1 + 5, torch.randn(100, 2, generator=g) * 0.1 - 5])
    d = GaussianMixtureDensity(n_components=2).fit(x)
    s = d.sample(4000, generator=torch.Generator().manual_seed(1))
    near_plus = ((s - 5).norm(dim=1) < 1).float().mean()
    near_minus = ((s + 5).norm(dim=1) < 1).float().mean()
    assert abs(near_plus - 0.75) < 0.04 and abs(near_minus - 0.25) < 0.04 and near_plus + near_minus > 0.99


def test_pca_gaussian_samples_lie_in_the_principal_subspace():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 3, generator=g, dtype=torch.float64))[0].T  # (3, 50) orthonormal
    x = torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    x = x @ basis + 7.0
    d = PCAGaussian(n_components=3).fit(x)
    s = d.sample(500, generator=torch.Generator().manual_seed(1))
    centered = s - 7.0
    residual = centered - (centered @ basis.T) @ basis
    assert s.shape == (500, 50) and residual.abs().max() < 1e-6
    assert torch.allclose(centered.std(0).pow(2).sum(), torch.tensor(14.0, dtype=torch.float64), rtol=0.2)
    assert PCAGaussian(n_components=100).fit(x[:10]).components.shape == (9, 50)  # at most n - 1 axes


@pytest.mark.parametrize("kind", ["gaussian", "gmm", "pca"])
def test_state_roundtrip_and_reproducible_sampling(kind):
    x, _, _ = correlated(n=200)
    d = make_density(kind, **({} if kind == "gaussian" else {"n_components": 2}))
    d.fit(x.float())
    tensors, config = d.to_state()
    assert all(isinstance(v, torch.Tensor) for v in tensors.values()) and config["kind"] == kind
    e = density_from_state(tensors, config)
    a = d.sample(7, generator=torch.Generator().manual_seed(3))
    b = e.sample(7, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, d.sample(7, generator=torch.Generator().manual_seed(4)))


def test_errors():
    with pytest.raises(ValueError, match="unknown density"):
        make_density("flow")
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        Gaussian().fit(torch.randn(10))
    with pytest.raises(ValueError, match="at least"):
        Gaussian().fit(torch.randn(1, 3))
    with pytest.raises(ValueError, match="finite"):
        Gaussian().fit(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAGaussian().sample(2)
    with pytest.raises(ValueError, match="unknown density kind"):
        density_from_state({}, {"kind": "flow"})
