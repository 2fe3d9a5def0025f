"""inrprior: learned priors over SIREN weights.

Represent images as SIRENs, query them at continuous coordinates with gradients and Laplacians, fit them from
values, gradients or Laplacians, blend them in the gradient domain, and learn priors that sample and fast-fit them.
"""
from . import data, density, plots, targets
from .coords import coord_to_pixel, grid, pixel_to_coord
from .fit import History, blend, fit
from .functions import DERIVATIVES, Functions, Query, gradient_per_pixel, laplacian_per_pixel
from .hyper import HyperConfig, HyperPrior
from .io import load, load_functions, load_prior, save_functions
from .meta import MetaConfig, MetaPrior
from .siren import Siren, count_params, stack_params, unstack_params
from .train import TrainConfig, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "Siren", "Functions", "Query", "DERIVATIVES", "grid", "pixel_to_coord", "coord_to_pixel", "gradient_per_pixel",
    "laplacian_per_pixel", "fit", "blend", "History", "MetaPrior", "MetaConfig", "HyperPrior", "HyperConfig",
    "train", "TrainConfig", "evaluate", "load", "load_functions", "load_prior", "save_functions", "count_params",
    "stack_params", "unstack_params", "data", "density", "plots", "targets",
]
