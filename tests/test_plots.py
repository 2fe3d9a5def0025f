import numpy as np
import pytest
import torch
from PIL import Image

from inrprior import plots
from inrprior.functions import Functions
from inrprior.siren import Siren


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 5, 7), (5, 7)])
def test_save_image_is_pixel_exact(tmp_path, shape):
    image = torch.rand(shape)
    path = plots.save_image(image, tmp_path / "sub" / "x.png")
    back = np.asarray(Image.open(path)).astype(np.float32) / 255
    expected = image.numpy() if image.dim() == 2 else np.moveaxis(image.numpy(), 0, -1).squeeze()
    assert back.shape == expected.shape and np.abs(back - expected).max() <= 0.5 / 255 + 1e-6


def test_save_image_clamps_and_rejects_bad_shapes(tmp_path):
    path = plots.save_image(torch.tensor([[[-1.0, 2.0]]]), tmp_path / "c.png")
    assert np.asarray(Image.open(path)).tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        plots.save_image(torch.rand(5, 4, 4), tmp_path / "bad.png")


def test_tile_is_pixel_exact():
    images = torch.rand(5, 3, 4, 6)
    mosaic = plots.tile(images, nrow=3, pad=1)
    assert mosaic.shape == (3, 2 * 4 + 1, 3 * 6 + 2)
    assert torch.equal(mosaic[:, 5:9, 7:13], images[4]) and (mosaic[:, 5:, 14:] == 1).all()
    with pytest.raises(ValueError, match="tile needs"):
        plots.tile(torch.rand(3, 4, 4))


def test_image_grid(tmp_path):
    path = plots.image_grid(torch.rand(5, 3, 8, 8), tmp_path / "g.png", nrow=3, titles=list("abcde"), title="t")
    w, h = png_size(path)
    assert w > h  # 3 columns, 2 rows
    assert png_size(plots.image_grid(torch.rand(4, 1, 8, 8), tmp_path / "s.png")) == (320, 320)
    with pytest.raises(ValueError, match="2 titles for 5 images"):
        plots.image_grid(torch.rand(5, 1, 4, 4), tmp_path / "x.png", titles=["a", "b"])


def test_plot_curves(tmp_path):
    xs = np.array([0, 1, 3, 10, 30])
    curves = {"prior": (xs, np.array([14.0, 20, 26, 29, 31])), "standard": (torch.tensor(xs), torch.arange(5.0))}
    png_size(plots.plot_curves(curves, tmp_path / "c.png", "steps", "PSNR (dB)", logx=True, title="fast fit"))
    with pytest.raises(ValueError, match="3 x values and 2 y values"):
        plots.plot_curves({"bad": ([1, 2, 3], [1, 2])}, tmp_path / "bad.png")


def test_fit_figure_and_derivative_maps(tmp_path):
    torch.manual_seed(0)
    net = Siren(2, 3, 16, 1)
    q = Functions(net, net.init_params(2)).render_derivatives(12, 10)
    assert plots.gradient_norm(q.gradient).shape == (2, 12, 10)
    rows = plots.derivative_rows(q, names=["a", "b"])
    assert rows[0]["name"] == "a" and rows[1]["gradient_norm"].shape == (12, 10)
    w, h = png_size(plots.derivative_maps(q, tmp_path / "d.png", names=["a", "b"]))
    assert h > 0.5 * w  # two rows of three panels
    rows = [dict(name="truth", image=torch.rand(1, 8, 8), gradient_norm=torch.rand(8, 8),
                 laplacian=torch.randn(8, 8)),
            dict(name="fit", image=torch.rand(1, 8, 8), psnr=31.2, gradient_norm=torch.rand(1, 8, 8, 2)),
            dict(name="zeros", image=torch.zeros(1, 8, 8), gradient_norm=torch.zeros(8, 8),
                 laplacian=torch.zeros(1, 8, 8))]
    png_size(plots.fit_figure(rows, tmp_path / "f.png", title="fits"))
    with pytest.raises(ValueError, match="at least one row"):
        plots.fit_figure([], tmp_path / "e.png")
