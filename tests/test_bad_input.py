"""Every row of the README's bad-input table: the input, the exception, and the one-line message it gets.

`python tests/test_bad_input.py` prints the table as it stands (that is how the README's table was made).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import inrprior as ip
from inrprior import data, io

NET = ip.Siren(2, 1, 8, 1)
IMAGE = torch.rand(1, 8, 8)


def _funcs():
    return ip.Functions(NET, NET.init_params(2))


def _meta():
    return ip.MetaPrior(ip.Siren(2, 1, 8, 1), inner_steps=1)


def _hyper():
    return ip.HyperPrior(ip.Siren(2, 1, 8, 1), latent_dim=4, hidden=8, head_width=4, min_context=1, image_size=8)


def _nan_image():
    x = IMAGE.clone()
    x[0, 1, 1] = float("nan")
    return x


def _foreign(tmp):
    save_file({"w": torch.zeros(2)}, str(tmp / "foreign.safetensors"))
    return tmp / "foreign.safetensors"


def _corrupt(tmp):
    (tmp / "corrupt.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    return tmp / "corrupt.safetensors"


def _other_arch(tmp):
    _funcs().save(tmp / "f.safetensors")
    return tmp / "f.safetensors"


def _not_image(tmp):
    (tmp / "notes.png").write_text("this is text, not an image")
    return tmp / "notes.png"


def _mismatched_prior(tmp):
    tensors, config = _meta().to_state()
    config["siren"]["hidden_features"] = 16  # an edited config: the tensors are of width 8
    return io.save_state(tmp / "prior.safetensors", tensors, config)


# (what the user did, how to do it given a tmp folder, the exception, a fragment of its one-line message)
CASES = [
    ("image with 5 dimensions", lambda t: ip.fit(torch.rand(1, 1, 1, 8, 8), steps=1, progress=False),
     ValueError, "must have shape (C, H, W) or (B, C, H, W)"),
    ("image containing NaN", lambda t: ip.fit(_nan_image(), steps=1, progress=False), ValueError, "NaN"),
    ("channels-last image tensor (H, W, C)", lambda t: ip.fit(torch.rand(8, 8, 3), steps=1, progress=False),
     ValueError, "channels"),
    ("image values 0..255 as floats", lambda t: ip.fit(IMAGE * 255, steps=1, progress=False), ValueError,
     "must be in [0, 1]"),
    ("unknown supervision name", lambda t: ip.fit(IMAGE, steps=1, supervision="curl", progress=False),
     ValueError, "curl"),
    ("coordinates of shape (N, 3)", lambda t: _funcs().query(torch.rand(5, 3)), ValueError, "(N, 2) or (B, N, 2)"),
    ("coordinates containing NaN", lambda t: _funcs().query(torch.full((5, 2), float("nan"))), ValueError, "NaN"),
    ("per-function coordinates for the wrong number of functions", lambda t: _funcs().query(torch.rand(3, 5, 2)),
     ValueError, "batch size 3 but there are 2 functions"),
    ("parameters of another architecture", lambda t: ip.Functions(ip.Siren(2, 1, 16, 1), NET.init_params(1)),
     ValueError, "expected"),
    ("a file that is not an image", lambda t: data.read_image(_not_image(t)), ValueError, "notes.png"),
    ("a missing image file", lambda t: data.read_image(t / "missing.png"), FileNotFoundError, "missing.png"),
    ("an empty image folder", lambda t: data.load(f"folder:{t}", size=8), ValueError, "holds no image files"),
    ("an unknown dataset", lambda t: data.load("imagenet", size=8), ValueError, "unknown dataset"),
    ("MNIST root without the files", lambda t: data.load(f"mnist:{t}", size=8), FileNotFoundError, "datasets/"),
    ("a safetensors file from another program", lambda t: io.load_functions(_foreign(t)), ValueError,
     "not an inrprior file"),
    ("a corrupt checkpoint", lambda t: io.load_functions(_corrupt(t)), ValueError, "corrupt"),
    ("functions loaded into another architecture",
     lambda t: io.load_functions(_other_arch(t), net=ip.Siren(2, 1, 16, 1)), ValueError, "but the given net is"),
    ("a functions file loaded as a prior", lambda t: io.load_prior(_other_arch(t)), ValueError, "functions"),
    ("a prior file whose tensors do not match its config", lambda t: io.load_prior(_mismatched_prior(t)), ValueError,
     "tensors do not match its config"),
    ("training on an empty dataset", lambda t: ip.train(_meta(), torch.zeros(0, 1, 8, 8), steps=1, out=t / "r",
                                                        progress=False), ValueError, "empty"),
    ("MetaPrior context with 0 pixels", lambda t: _meta().adapt_context(torch.zeros(1, 0, 2), torch.zeros(1, 0, 1)),
     ValueError, "pixel"),
    ("HyperPrior context with 0 pixels", lambda t: _hyper().adapt_context(torch.zeros(1, 0, 2), torch.zeros(1, 0, 1)),
     ValueError, "pixel"),
    ("RGB images for a gray prior", lambda t: _meta().adapt(torch.rand(2, 3, 8, 8)), ValueError, "channel"),
    ("a density the prior cannot fit, asked of train", lambda t: ip.train(_meta(), torch.rand(2, 1, 8, 8), steps=1,
                                                                          out=t / "r", density="gmm", progress=False),
     ValueError, "checked before training"),
    ("a function index past the end", lambda t: _funcs()[2], IndexError, "out of range"),
    ("context values outside [0, 1]",
     lambda t: _meta().adapt_context(torch.rand(1, 4, 2), torch.full((1, 4, 1), 300.0)), ValueError,
     "must be in [0, 1] like the images"),
    ("RGB images for a gray HyperPrior", lambda t: _hyper().adapt(torch.rand(2, 3, 8, 8)), ValueError,
     "3 channels, but the SIREN outputs 1"),
    ("a complex-valued image", lambda t: ip.fit(torch.rand(1, 8, 8, dtype=torch.complex64), steps=1, progress=False),
     TypeError, "must be real"),
    ("a chunk of 0 points", lambda t: _funcs().query(torch.rand(5, 2), chunk=0), ValueError,
     "chunk must be a positive integer"),
    ("a render size that is not an integer", lambda t: _funcs().render(8.5, 8), ValueError,
     "grid size must be positive integers"),
    ("context values containing NaN",
     lambda t: _hyper().adapt_context(torch.rand(1, 4, 2), torch.full((1, 4, 1), float("nan"))), ValueError, "NaN"),
]


@pytest.mark.parametrize("what,call,error,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(what, call, error, fragment, tmp_path):
    with pytest.raises(error) as info:
        call(tmp_path)
    message = str(info.value)
    assert fragment.lower() in message.lower(), message
    assert "\n" not in message.strip(), f"not one line: {message!r}"


def test_coordinates_outside_the_image_are_allowed():
    out = _funcs().query(torch.tensor([[1.5, -2.0], [3.0, 3.0]]), ("value", "gradient", "laplacian"))
    assert torch.isfinite(out.value).all() and torch.isfinite(out.laplacian).all()


if __name__ == "__main__":  # print the README table
    import tempfile
    from pathlib import Path

    print("| input | error | message |\n|---|---|---|")
    for what, call, error, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                call(Path(tmp))
                message = "(no error)"
            except Exception as e:  # noqa: BLE001 - we print what each gets
                message = f"`{type(e).__name__}`: {' '.join(str(e).split())}".replace(tmp, "/some/path")
        print(f"| {what} | {error.__name__} | {message.split(': ', 1)[1] if ': ' in message else message} |")
    print("| coordinates outside [-1, 1] | allowed | the function extrapolates there (values are not clamped) |")


def test_render_rejects_unknown_amp():
    with pytest.raises(ValueError, match="amp must be"):
        _funcs().render(4, 4, amp="fp8")
