"""The GPU speed paths (bf16 autocast, torch.compile) of fit and render give the default path's results within stated
tolerances. CPU autocast and CPU inductor here; the same code paths run on CUDA."""
import pytest
import torch

import inrprior as ip

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def tiny_functions(seed=0, n=2):
    net = ip.Siren(2, 3, 32, 2)
    return ip.Functions(net, net.init_params(n, generator=torch.Generator().manual_seed(seed)))


def test_render_bf16_matches_float32_within_tolerance():
    f = tiny_functions()
    exact, fast = f.render(24, 24), f.render(24, 24, amp="bf16")
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    err = (exact - fast).abs()
    assert err.max() < 1e-2 and err.mean() < 2e-3  # bf16 keeps 8 bits of mantissa
    assert err.max() > 0  # it did run in bf16


def test_render_compile_matches_eager():
    f = tiny_functions()
    eager = f.render(20, 20, chunk=256)  # two chunks: 256 + 144 points
    compiled = f.render(20, 20, chunk=256, compile=True)
    assert compiled.shape == eager.shape and compiled.dtype == eager.dtype
    assert (compiled - eager).abs().max() < 1e-5  # measured 6e-8
    assert torch.equal(f.render(20, 20, chunk=256, compile=True), compiled)  # the cached graphs, run again


def test_render_derivatives_compile_matches_eager():
    # both run the hand-written forward mode (siren_query): compiled fused kernels against eager, shared tensor kept
    net = ip.Siren(2, 3, 32, 2)
    params = net.init_params(2, generator=torch.Generator().manual_seed(1))
    params["layers.1.weight"] = params["layers.1.weight"][0]  # a tensor shared by both functions
    f = ip.Functions(net, params)
    eager = f.render_derivatives(12, 12)
    compiled = f.render_derivatives(12, 12, compile=True)
    for name in ("value", "gradient", "laplacian"):
        a, b = getattr(eager, name), getattr(compiled, name)
        assert b.shape == a.shape, name
        # within 2e-5 of the largest magnitude (measured <= 4e-6: the Laplacian of a w0=30 SIREN reaches ~30)
        assert (a - b).abs().max() <= 2e-5 * a.abs().max(), name
    only = f.render_derivatives(12, 12, ("gradient",), compile=True)
    assert only.value is None and only.laplacian is None and torch.equal(only.gradient, compiled.gradient)


@pytest.mark.parametrize("supervision", ["value", {"value": 1.0, "gradient": 0.1}])
def test_fit_bf16_reaches_the_float32_psnr(supervision):
    image = ip.data.photo("camera", size=16)
    runs = {amp: ip.fit(image, steps=100, supervision=supervision, net=ip.Siren(2, 1, 32, 1), lr=3e-4,
                        progress=False, amp=amp) for amp in (None, "bf16")}
    (f32, h32), (f16, h16) = runs[None], runs["bf16"]
    assert h32.final_psnr[0] > 30  # a fit that is well under way, not a bf16 noise floor
    assert abs(h16.final_psnr[0] - h32.final_psnr[0]) < 0.5  # measured 0.09 dB (value), 0.01 dB (mix)
    assert all(v.dtype == torch.float32 for v in f16.params.values())  # weights stay float32
    assert (f16.params["layers.0.weight"] - f32.params["layers.0.weight"]).abs().max() > 1e-4  # bf16 did run


def test_fit_bf16_with_compile_matches_eager_bf16():
    image = ip.data.photo("camera", size=16)
    runs = [ip.fit(image, steps=30, net=ip.Siren(2, 1, 16, 1), lr=1e-3, progress=False, amp="bf16", compile=c)
            for c in (False, True)]
    (eager, he), (compiled, hc) = runs
    assert abs(he.final_psnr[0] - hc.final_psnr[0]) < 0.1  # measured 0.002 dB
    for k in eager.params:  # fused kernels round bf16 differently: measured 4e-4 (bf16 vs float32 eager: 3e-3)
        assert torch.allclose(eager.params[k], compiled.params[k], atol=2e-3, rtol=0), k


def test_bad_amp_raises():
    f = tiny_functions(n=1)
    image = torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match="amp must be None or 'bf16'"):
        f.render(8, 8, amp="fp16")
    with pytest.raises(ValueError, match="amp must be None or 'bf16'"):
        ip.fit(image, steps=1, net=ip.Siren(2, 1, 8, 1), amp="float16", progress=False)
    with pytest.raises(ValueError, match="amp must be None or 'bf16'"):
        ip.blend(image, image, steps=1, net=ip.Siren(2, 1, 8, 1), amp=True, progress=False)
    blended, _ = ip.blend(image, image, steps=2, net=ip.Siren(2, 1, 8, 1), amp="bf16", progress=False)
    assert len(blended) == 1  # blend shares fit's loop, amp included


def test_cli_speed_flags(tmp_path, capsys):
    from PIL import Image

    from inrprior import cli

    Image.fromarray((ip.data.photo("camera", size=12)[0] * 255).byte().numpy()).save(tmp_path / "cam.png")
    assert cli.main(["fit", str(tmp_path / "cam.png"), "--steps", "2", "--hidden", "8", "--layers", "1", "--quiet",
                     "--amp", "bf16", "-o", str(tmp_path / "fit")]) == 0
    assert '"amp": "bf16"' in (tmp_path / "fit" / "history.json").read_text()
    functions = str(tmp_path / "fit" / "functions.safetensors")
    assert cli.main(["render", functions, "--size", "8", "8", "--amp", "bf16", "-o", str(tmp_path / "r.png")]) == 0
    args = cli.build_parser().parse_args(["render", functions, "--size", "8", "8", "--compile", "-o", "x.png"])
    assert args.compile and args.amp is None
    capsys.readouterr()
    assert cli.main(["render", functions, "--size", "8", "8", "--amp", "bf16", "--derivative", "laplacian",
                     "-o", str(tmp_path / "l.png")]) == 2
    assert "--amp applies to --derivative value only" in capsys.readouterr().err
    assert cli.main(["fit", str(tmp_path / "cam.png"), "--amp", "fp16", "-o", str(tmp_path / "x")]) == 2
