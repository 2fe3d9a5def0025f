"""bf16 autocast on render gives the default path's image within a stated tolerance (CPU autocast here; the same
code path runs on CUDA)."""
import torch

import inrprior as ip


def test_render_bf16_matches_float32_within_tolerance():
    torch.manual_seed(0)
    net = ip.Siren(2, 3, 32, 2)
    f = ip.Functions(net, net.init_params(2))
    exact, fast = f.render(24, 24), f.render(24, 24, amp="bf16")
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    err = (exact - fast).abs()
    assert err.max() < 1e-2 and err.mean() < 2e-3  # bf16 keeps 8 bits of mantissa
    assert err.max() > 0  # it did run in bf16
