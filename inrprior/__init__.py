"""inrprior: learned priors over SIREN weights.

Represent images as SIRENs, query them at continuous coordinates with gradients and Laplacians, fit them from
values, gradients or Laplacians, blend them in the gradient domain, and learn priors that sample and fast-fit them.
"""
from .coords import coord_to_pixel, grid, pixel_to_coord
from .functions import DERIVATIVES, Functions, Query, gradient_per_pixel, laplacian_per_pixel
from .siren import Siren, count_params, stack_params, unstack_params

__version__ = "0.1.0"
