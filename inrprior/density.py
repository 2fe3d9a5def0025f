"""Densities over latents or weight vectors, for sampling new functions from a trained prior.

Each density is fitted with numpy / scikit-learn and then kept as plain tensors, so sampling needs only torch and a
``torch.Generator`` (reproducible), and saving needs no pickle: ``to_state()`` returns ``(tensors, config)`` that
:mod:`inrprior.io` writes as safetensors + JSON, and ``from_state`` rebuilds the density from them.

- :class:`Gaussian`: one full-covariance Gaussian (covariance regularized by ``reg`` times the mean variance).
- :class:`GaussianMixtureDensity`: scikit-learn ``GaussianMixture`` (full covariances), parameters kept as tensors.
- :class:`PCAGaussian`: scikit-learn ``PCA`` to ``n_components`` dimensions, then a :class:`Gaussian` there; samples
  are mapped back with the principal axes (for high-dimensional weight vectors with few examples).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

__all__ = ["Gaussian", "GaussianMixtureDensity", "PCAGaussian", "make_density", "density_from_state", "DENSITIES"]


def _check_data(x: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x), dtype=torch.get_default_dtype())
    if x.dim() != 2:
        raise ValueError(f"density data must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} rows to fit a density, got {x.shape[0]}")
    if not torch.is_floating_point(x) or not torch.isfinite(x).all():
        raise ValueError("density data must be finite floating-point values")
    return x.detach()


def _randn(n: int, d: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (CPU generators are the common case), then move: reproducible everywhere.
    dev = generator.device if generator is not None else like.device
    return torch.randn(n, d, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def _chol(cov: np.ndarray, reg: float) -> np.ndarray:
    d = cov.shape[0]
    eps = reg * max(float(np.trace(cov)) / d, 1e-12)
    for _ in range(8):  # grow the jitter until the covariance is numerically positive definite
        try:
            return np.linalg.cholesky(cov + eps * np.eye(d))
        except np.linalg.LinAlgError:
            eps *= 10
    raise ValueError("covariance is not positive definite even after regularization")


class _Density(ABC):
    kind = ""
    dim: int

    def _fitted(self) -> None:
        if not hasattr(self, "dim"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(x) first")

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, dim)`` draws."""

    @abstractmethod
    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and a JSON-able config that :func:`density_from_state` rebuilds the density from."""


class Gaussian(_Density):
    """A full-covariance Gaussian ``N(mean, L L^T)``.

    Args:
        reg: ridge added to the covariance diagonal, relative to the mean variance (keeps it invertible when
            ``n <= d``).
    """
    kind = "gaussian"

    def __init__(self, reg: float = 1e-6):
        self.reg = float(reg)

    def fit(self, x: torch.Tensor) -> "Gaussian":
        """Fit mean and covariance of ``x (n, d)``; returns self."""
        x = _check_data(x)
        a = x.double().cpu().numpy()
        cov = np.atleast_2d(np.cov(a, rowvar=False))
        self.mean = x.new_tensor(a.mean(0))  # (d,)
        self.scale_tril = x.new_tensor(_chol(cov, self.reg))  # (d, d)
        self.dim = x.shape[1]
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples."""
        self._fitted()
        z = _randn(n, self.dim, self.mean, generator)
        return self.mean + z @ self.scale_tril.T

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        self._fitted()
        return {"mean": self.mean, "scale_tril": self.scale_tril}, {"kind": self.kind, "reg": self.reg}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "Gaussian":
        g = cls(reg=config.get("reg", 1e-6))
        g.mean, g.scale_tril, g.dim = tensors["mean"], tensors["scale_tril"], tensors["mean"].shape[0]
        return g


class GaussianMixtureDensity(_Density):
    """A mixture of full-covariance Gaussians fitted by scikit-learn's ``GaussianMixture``.

    Args:
        n_components: mixture components (reduced to the number of rows when there are fewer).
        reg_covar: scikit-learn's diagonal regularization.
        seed: ``random_state`` of the fit (the fit is deterministic given it).
    """
    kind = "gmm"

    def __init__(self, n_components: int = 8, reg_covar: float = 1e-6, seed: int = 0):
        self.n_components, self.reg_covar, self.seed = int(n_components), float(reg_covar), int(seed)

    def fit(self, x: torch.Tensor) -> "GaussianMixtureDensity":
        from sklearn.mixture import GaussianMixture

        x = _check_data(x)
        k = min(self.n_components, x.shape[0])
        gm = GaussianMixture(k, covariance_type="full", reg_covar=self.reg_covar, random_state=self.seed)
        gm.fit(x.double().cpu().numpy())
        self.weights = x.new_tensor(gm.weights_)  # (k,)
        self.means = x.new_tensor(gm.means_)  # (k, d)
        self.scale_trils = x.new_tensor(np.linalg.cholesky(gm.covariances_))  # (k, d, d)
        self.dim = x.shape[1]
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples: a component per row by its weight, then a Gaussian draw from it."""
        self._fitted()
        dev = generator.device if generator is not None else self.weights.device
        comp = torch.multinomial(self.weights.to(dev).double(), n, replacement=True, generator=generator)
        comp = comp.to(self.means.device)  # (n,)
        z = _randn(n, self.dim, self.means, generator)
        return self.means[comp] + torch.einsum("nij,nj->ni", self.scale_trils[comp], z)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        self._fitted()
        return ({"weights": self.weights, "means": self.means, "scale_trils": self.scale_trils},
                {"kind": self.kind, "n_components": self.n_components, "reg_covar": self.reg_covar,
                 "seed": self.seed})

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "GaussianMixtureDensity":
        g = cls(config.get("n_components", 8), config.get("reg_covar", 1e-6), config.get("seed", 0))
        g.weights, g.means, g.scale_trils = tensors["weights"], tensors["means"], tensors["scale_trils"]
        g.dim = g.means.shape[1]
        return g


class PCAGaussian(_Density):
    """scikit-learn ``PCA`` to ``n_components`` dimensions and a :class:`Gaussian` over the projections.

    Args:
        n_components: principal axes kept (reduced to ``min(n - 1, d)`` when the data has fewer).
        reg: the inner Gaussian's regularization.
    """
    kind = "pca"

    def __init__(self, n_components: int = 32, reg: float = 1e-6):
        self.n_components, self.reg = int(n_components), float(reg)

    def fit(self, x: torch.Tensor) -> "PCAGaussian":
        from sklearn.decomposition import PCA

        x = _check_data(x, min_rows=3)
        k = max(1, min(self.n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(k, svd_solver="full").fit(x.cpu().numpy())  # keeps float32: x may be images x SIREN weights
        self.center = x.new_tensor(pca.mean_)  # (d,)
        self.components = x.new_tensor(pca.components_)  # (k, d), orthonormal rows
        self.inner = Gaussian(self.reg).fit((x - self.center) @ self.components.T)  # over (n, k) projections
        self.dim = x.shape[1]
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples, lying in the span of the principal axes around the data mean."""
        self._fitted()
        return self.center + self.inner.sample(n, generator) @ self.components

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        self._fitted()
        inner_t, inner_c = self.inner.to_state()
        tensors = {"center": self.center, "components": self.components,
                   **{f"inner.{k}": v for k, v in inner_t.items()}}
        return tensors, {"kind": self.kind, "n_components": self.n_components, "reg": self.reg, "inner": inner_c}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "PCAGaussian":
        g = cls(config.get("n_components", 32), config.get("reg", 1e-6))
        g.center, g.components, g.dim = tensors["center"], tensors["components"], tensors["center"].shape[0]
        inner = {k[len("inner."):]: v for k, v in tensors.items() if k.startswith("inner.")}
        g.inner = Gaussian.from_state(inner, config.get("inner", {}))
        return g


DENSITIES = {"gaussian": Gaussian, "gmm": GaussianMixtureDensity, "pca": PCAGaussian}


def make_density(kind: str, **kwargs) -> _Density:
    """A fresh (unfitted) density by name: ``"gaussian"``, ``"gmm"`` or ``"pca"``; kwargs go to its constructor."""
    if kind not in DENSITIES:
        raise ValueError(f"unknown density {kind!r}; choose from {sorted(DENSITIES)}")
    return DENSITIES[kind](**kwargs)


def density_from_state(tensors: dict[str, torch.Tensor], config: dict) -> _Density:
    """Rebuild a fitted density from what its ``to_state()`` returned."""
    kind = config.get("kind")
    if kind not in DENSITIES:
        raise ValueError(f"unknown density kind {kind!r} in saved state; expected one of {sorted(DENSITIES)}")
    return DENSITIES[kind].from_state(tensors, config)
