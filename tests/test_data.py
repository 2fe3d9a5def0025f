import numpy as np
import pytest
import torch
from PIL import Image

import inrprior.data as data
from inrprior.coords import coord_to_pixel


def test_faces_split_sizes_range_and_determinism():
    train, test, every = (data.load("faces", size=16, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (80, 20, 100)
    x = data.stack(train)
    assert x.shape == (80, 1, 16, 16) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.1
    assert torch.equal(data.stack(every)[4::5], data.stack(test))  # documented rule: i % 5 == 4 is test
    t = data.stack(test)
    assert not any(torch.equal(a, b) for a in x for b in t)  # disjoint
    assert torch.equal(data.stack(data.load("faces", size=16)), x)


def test_sizes_and_channels():
    assert data.load("faces", size=(8, 12))[0].shape == (1, 8, 12)
    assert data.load("faces", size=8, channels=3)[0].shape == (3, 8, 8)
    patches = data.load("patches", size=32, split="all")
    assert patches[0].shape == (3, 32, 32) and len(patches) > 1000
    assert len(data.load("patches", size=32, split="train")) + len(data.load("patches", size=32, split="test")) \
        == len(patches)
    gray = data.load("patches", size=32, channels=1)[0]
    rgb = data.load("patches", size=32)[0]
    assert torch.allclose(gray[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-6)


def test_digits():
    d = data.load("digits", size=8, split="all")
    assert len(d) == 1797 and d[0].shape == (1, 8, 8)
    x = data.stack(d)
    assert x.min() == 0 and x.max() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(spec="nope"), "unknown dataset 'nope'"),
    (dict(spec="folder:"), "unknown dataset"),
    (dict(spec="faces", split="val"), "split must be"),
    (dict(spec="faces", channels=4), "channels must be"),
    (dict(spec="faces", size=0), "size must be"),
    (dict(spec="faces", size=True), "size must be"),
    (dict(spec="faces", size=(8,)), "size must be"),
    (dict(spec="faces", size=8.0), "size must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_photo():
    cam = data.photo("camera")
    assert cam.shape == (1, 512, 512) and 0 <= cam.min() and cam.max() <= 1
    assert data.photo("camera", 16).shape == (1, 16, 16)
    assert data.photo("astronaut", (20, 10)).shape == (3, 20, 10)
    assert data.photo("camera", 8, channels=3).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="unknown photo 'lena'"):
        data.photo("lena")
    data.photo("camera").zero_()  # the caller's copy: the cached photo and the patches built from it stay
    assert data.photo("camera").max() > 0.5


def test_resize_crops_to_aspect():
    image = torch.zeros(1, 10, 20)
    image[..., 5:15] = 1  # the centre square is white
    assert torch.allclose(data.resize(image, 5), torch.ones(1, 5, 5))
    assert data.resize(image, (10, 20)) is image


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_read_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    x = data.read_image(write_png(tmp_path / "g.png", gray))
    assert x.shape == (1, 6, 5) and torch.allclose(x[0], torch.from_numpy(gray / 255.0).float())
    rgba = rng.integers(0, 256, (4, 3, 4), dtype=np.uint8)
    assert data.read_image(write_png(tmp_path / "a.png", rgba)).shape == (3, 4, 3)  # alpha dropped
    assert data.read_image(tmp_path / "a.png", channels=1).shape == (1, 4, 3)
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    x16 = data.read_image(write_png(tmp_path / "d.png", deep))
    assert torch.allclose(x16[0], torch.from_numpy(deep / 65535.0).float())
    np.save(tmp_path / "h.npy", rng.random((4, 5, 3)))
    assert data.read_image(tmp_path / "h.npy").shape == (3, 4, 5)


def test_read_image_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not an image file Pillow can read"):
        data.read_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_image(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError, match="folder"):
        data.read_image(tmp_path)
    bad = np.zeros((4, 4))
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        data.read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        data.read_image(tmp_path / "shape.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a plain numeric"):
        data.read_image(tmp_path / "obj.npy")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "t.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.jpg is a damaged image"):
        data.read_image(tmp_path / "cut.jpg")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "b" / "2.png", rng.integers(0, 256, (12, 20), dtype=np.uint8))
    for i in range(5):
        write_png(tmp_path / "a" / f"{i}.png", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    (tmp_path / "README.txt").write_text("skipped: not an image extension")
    every = data.load(f"folder:{tmp_path}", size=8, split="all")
    assert len(every) == 6 and [tuple(every[i].shape) for i in range(6)] == [(3, 8, 8)] * 6  # channels of a/0.png
    x = data.stack(every)
    assert torch.allclose(x[0], data.resize(data.read_image(tmp_path / "a" / "0.png"), 8))
    assert torch.allclose(x[5], data.resize(data.read_image(tmp_path / "b" / "2.png", channels=3), 8))
    assert len(data.load(f"folder:{tmp_path}", size=8)) == 5
    assert torch.equal(data.stack(data.load(f"folder:{tmp_path}", size=8, split="test"))[0], x[4])
    assert data.load(f"folder:{tmp_path}", size=8, channels=1)[0].shape == (1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image files"):
        data.load(f"folder:{tmp_path / 'empty'}")
    write_png(tmp_path / "ok" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "ok" / "1.png").write_text("broken")
    with pytest.raises(ValueError, match=r"1 file\(s\) Pillow cannot read: 1.png"):  # before any training
        data.load(f"folder:{tmp_path / 'ok'}", size=4)
    (tmp_path / "ok" / "1.png").unlink()
    assert len(data.load(f"folder:{tmp_path / 'ok'}", size=4)) == 1
    assert len(data.load(f"folder:{tmp_path / 'ok'}", size=4, split="test")) == 0  # too few for a test image


def test_image_folder_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for i in range(2):
        write_png(tmp_path / "photos" / f"{i}.png", np.full((4, 4), 60 * i, np.uint8))
    assert len(data.load("folder:~/photos", size=4, split="all")) == 2


def write_idx(path, array):
    """Write an array in the idx format that MNIST's raw files use (unsigned bytes)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (10, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    for prefix, x in images.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(len(x)) % 10)
    train = data.load(f"mnist:{tmp_path}", size=28)
    assert len(train) == 10 and train[0].shape == (1, 28, 28)
    assert torch.allclose(train[3][0], torch.from_numpy(images["train"][3] / 255.0).float())
    assert len(data.load(f"mnist:{tmp_path}", size=14, split="all")) == 15
    assert data.load(f"mnist:{tmp_path}", size=14, split="test", channels=3)[4].shape == (3, 14, 14)


@pytest.mark.parametrize("kind", ["mnist", "cifar10", "celeba"])
def test_missing_torchvision_dataset_points_to_recipe(tmp_path, kind):
    with pytest.raises(FileNotFoundError, match=f"not found under .*datasets/{kind}.py"):
        data.load(f"{kind}:{tmp_path}")


def test_sample_context_picks_distinct_true_pixels():
    images = torch.rand(3, 2, 6, 5)
    coords, values = data.sample_context(images, 7, generator=torch.Generator().manual_seed(0))
    assert coords.shape == (3, 7, 2) and values.shape == (3, 7, 2)
    px = coord_to_pixel(coords, 6, 5).round().long()  # (3, 7, 2) as (column, row)
    for b in range(3):
        assert len({tuple(p) for p in px[b].tolist()}) == 7
        assert torch.equal(values[b], images[b][:, px[b, :, 1], px[b, :, 0]].T)
    assert not torch.equal(px[0], px[1])  # each image gets its own pixels
    again, _ = data.sample_context(images, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(coords, again)
    assert data.sample_context(images[0], 0.5)[0].shape == (1, 15, 2)
    with pytest.raises(ValueError, match="cannot pick 31 pixels from a 6x5 image"):
        data.sample_context(images, 31)
    assert data.sample_context(images, np.float32(0.5))[0].shape == (3, 15, 2)  # a numpy float is a fraction too


def test_numpy_images_are_channels_last_and_scaled_by_their_integer_type():
    from inrprior.coords import as_image_batch

    batch, single = as_image_batch(np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3))
    assert batch.shape == (2, 3, 4, 5) and not single and batch[1, 2, 3, 4] == (2 * 60 - 1) / 255
    assert as_image_batch(np.full((4, 5), 65535, np.uint16))[0].max() == 1.0
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got \[0, 255\].*divide by 255"):
        as_image_batch(torch.tensor([[[0.0, 255.0]]]))


def test_pil_images_keep_their_bit_depth_and_gray_modes():
    from inrprior.coords import as_image_batch

    ramp = np.linspace(0, 65535, 16, dtype=np.uint16).reshape(4, 4)
    deep = as_image_batch(Image.fromarray(ramp))[0]  # a 16-bit gray image: scaled by 1/65535, one channel
    assert deep.shape == (1, 1, 4, 4) and torch.allclose(deep[0, 0], torch.from_numpy(ramp / 65535.0).float())
    gray_alpha = Image.fromarray(np.full((3, 5, 2), 128, np.uint8), mode="LA")
    assert as_image_batch(gray_alpha)[0].shape == (1, 1, 3, 5)
    assert as_image_batch(Image.fromarray(np.full((3, 5), 0.25, np.float32)))[0].max() == 0.25  # mode "F"
    half, _ = as_image_batch(torch.full((1, 4, 4), 0.5, dtype=torch.float16))
    assert half.dtype == torch.float32  # fitting in float16 overflows Adam: images are computed in float32
    assert as_image_batch(torch.full((1, 2, 2), 65535, dtype=torch.uint16))[0].max() == 1.0


def test_folder_recipe_copies_every_file_with_the_channels_inrprior_reads(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((10, 14, 3)) * 255).astype(np.uint8)).save(src / "x.jpg")
    Image.fromarray((rng.random((10, 14)) * 255).astype(np.uint8)).save(src / "x.png")  # same stem as x.jpg
    Image.fromarray((rng.random((9, 9, 2)) * 255).astype(np.uint8), mode="LA").save(src / "a.png")  # gray + alpha
    recipe = Path(__file__).resolve().parents[1] / "datasets" / "folder.py"
    done = subprocess.run([sys.executable, str(recipe), str(src), "--size", "6", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "x.jpg.png", "x.png.png"]
    for name, copy in (("a.png", "a.png"), ("x.jpg", "x.jpg.png"), ("x.png", "x.png.png")):
        assert data.read_image(tmp_path / "out" / copy).shape == (data.read_image(src / name).shape[0], 6, 6)
