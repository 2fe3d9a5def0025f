import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import inrprior.io as io
from inrprior.functions import Functions
from inrprior.siren import Siren


def tiny(b=3, hidden=16, seed=0):
    torch.manual_seed(seed)
    net = Siren(2, 3, hidden, 1, w0=30.0)
    return Functions(net, net.init_params(b))


def test_functions_roundtrip_gives_identical_renders(tmp_path):
    f = tiny()
    path = io.save_functions(f, tmp_path / "f.safetensors")
    g = io.load_functions(path)
    assert g.net.config == f.net.config and len(g) == 3
    for k in f.params:
        assert torch.equal(f.params[k], g.params[k])
    assert torch.equal(f.render(8, 6), g.render(8, 6))


def test_method_save_folder_and_missing_suffix(tmp_path):
    f = tiny(b=1)
    f.save(tmp_path / "noext")
    assert (tmp_path / "noext.safetensors").is_file()
    assert torch.equal(io.load_functions(tmp_path / "noext").render(4, 4), f.render(4, 4))
    io.save_functions(f, tmp_path)  # an existing folder gets functions.safetensors
    assert isinstance(io.load(tmp_path), Functions)


def test_shared_tensors_and_float64_survive(tmp_path):
    f = tiny(b=2)
    params = {k: v.double() for k, v in f.params.items()}
    params["layers.0.weight"] = params["layers.0.weight"][0]  # shared by both functions
    f = Functions(f.net.double(), params)
    g = io.load_functions(io.save_functions(f, tmp_path / "f"))
    assert g.dtype == torch.float64 and g.params["layers.0.weight"].shape == (16, 2)
    assert torch.allclose(f.render(5, 5), g.render(5, 5))


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, broken):
    path = tmp_path / "f.safetensors"
    old = tiny(seed=0)
    io.save_functions(old, path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(io.os, broken, fail)
    with pytest.raises(OSError, match="No space"):
        io.save_functions(tiny(seed=1), path)
    monkeypatch.undo()
    assert torch.equal(io.load_functions(path).params["layers.0.weight"], old.params["layers.0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]  # no temp file left behind


def test_state_roundtrip_keeps_config(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.zeros(0)}
    config = {"kind": "checkpoint", "step": 7, "nested": {"x": [1, 2]}}
    path = io.save_state(tmp_path / "s.safetensors", tensors, config)
    t, c = io.load_state(path, kind=("checkpoint", "other"))
    assert torch.equal(t["a"], tensors["a"]) and c["step"] == 7 and c["nested"] == {"x": [1, 2]}
    assert c["format_version"] == io.FORMAT_VERSION


def test_save_state_rejects_bad_config(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        io.save_state(tmp_path / "s", {}, {"step": 1})
    with pytest.raises(TypeError, match="JSON"):
        io.save_state(tmp_path / "s", {}, {"kind": "x", "bad": object()})
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        io.save_state(tmp_path / "s", {"a": [1.0]}, {"kind": "x"})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_functions(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="folder"):
        io.load_state(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"folder .* has no prior.safetensors \(a run that has not finished"):
        io.load_prior(tmp_path)
    Functions(Siren(2, 1, 8, 1), Siren(2, 1, 8, 1).init_params(1)).save(tmp_path / "functions.safetensors")
    with pytest.raises(FileNotFoundError, match=r"has no prior.safetensors \(it holds fitted functions: .*render"):
        io.load_prior(tmp_path)
    assert (tmp_path / "functions.safetensors").stat().st_mode & 0o044 == 0o044 & ~io._UMASK  # as readable as others


@pytest.mark.parametrize("content", [os.urandom(256), b"", b"\x08" + b"\x00" * 7 + b"{}"])
def test_random_bytes(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        io.load_functions(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an inrprior file"):
        io.load_state(path)


def test_corrupt_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"inrprior": "{not json"})
    with pytest.raises(ValueError, match="not JSON"):
        io.load_state(path)


def test_wrong_kind(tmp_path):
    path = io.save_state(tmp_path / "p", {"w": torch.ones(1)}, {"kind": "meta"})
    with pytest.raises(ValueError, match="holds 'meta', expected 'functions' \\(a prior: sample from it"):
        io.load_functions(path)
    ckpt = io.save_state(tmp_path / "c", {"w": torch.ones(1)}, {"kind": "checkpoint"})
    with pytest.raises(ValueError, match="not a known prior kind .*training checkpoint"):
        io.load_prior(ckpt)


def test_newer_version(tmp_path):
    path = io.save_state(tmp_path / "p", {}, {"kind": "functions", "format_version": io.FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="newer than this inrprior reads"):
        io.load_functions(path)


def test_loading_into_a_given_net_leaves_it_alone(tmp_path):
    net = Siren(2, 1, 8, 1)
    Functions(net, {k: v.double() for k, v in net.init_params(2).items()}).save(tmp_path / "f.safetensors")
    f = io.load_functions(tmp_path / "f.safetensors", net=net)
    assert f.dtype == torch.float64 and next(net.parameters()).dtype == torch.float32  # the net may be a prior's


def test_architecture_mismatch_with_given_net(tmp_path):
    path = io.save_functions(tiny(hidden=16), tmp_path / "f")
    with pytest.raises(ValueError, match=r"Siren\(2->3, 1x16.*given net is Siren\(2->3, 1x32"):
        io.load_functions(path, net=Siren(2, 3, 32, 1))
    g = io.load_functions(path, net=Siren(2, 3, 16, 1))  # a matching net is used as is
    assert g.net.config["hidden_features"] == 16


def test_tensors_that_do_not_match_the_stored_architecture(tmp_path):
    f = tiny(hidden=16)
    config = {"kind": "functions", "siren": {**f.net.config, "hidden_features": 8}}
    path = io.save_state(tmp_path / "f", f.params, config)
    with pytest.raises(ValueError, match="layers.0.weight.*shape"):
        io.load_functions(path)
    path = io.save_state(tmp_path / "g", f.params, {"kind": "functions", "siren": {"depth": 3}})
    with pytest.raises(ValueError, match="unknown SIREN config"):
        io.load_functions(path)


class DummyPrior(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((2, 2), scale))
        self.config = {"kind": "dummy-test", "scale": scale}

    def to_state(self):
        return {"weight": self.weight.detach()}, dict(self.config)

    @classmethod
    def from_state(cls, tensors, config):
        prior = cls(config["scale"])
        prior.weight.data.copy_(tensors["weight"])
        return prior


def test_prior_registry_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "PRIORS", {})
    io.register_prior("dummy-test", DummyPrior)
    prior = DummyPrior(2.5)
    path = io.save_prior(prior, tmp_path / "run" / "prior")
    assert path.name == "prior.safetensors"
    loaded = io.load_prior(tmp_path / "run")  # a folder means folder/prior.safetensors
    assert isinstance(loaded, DummyPrior) and torch.equal(loaded.weight, prior.weight)
    assert isinstance(io.load(path), DummyPrior)
    with pytest.raises(TypeError, match="to_state"):
        io.register_prior("bad", int)


def test_unknown_prior_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "PRIORS", {})
    path = io.save_state(tmp_path / "p", {}, {"kind": "alien"})
    with pytest.raises(ValueError, match="'alien', which is not a known prior kind"):
        io.load_prior(path)


def test_no_pickle_in_file(tmp_path):
    path = io.save_functions(tiny(b=1), tmp_path / "f")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert json.loads(header["__metadata__"]["inrprior"])["kind"] == "functions"


def test_check_writable(tmp_path, monkeypatch):
    out = io.check_writable(tmp_path / "a" / "b")
    assert out.is_dir() and not list(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a file of that name exists"):
        io.check_writable(tmp_path / "file")
    with pytest.raises(OSError, match="cannot create output folder"):
        io.check_writable(tmp_path / "file" / "sub")
    with pytest.raises(OSError, match="MB free"):
        io.check_writable(tmp_path, min_free_mb=1e12)

    def denied(*args, **kwargs):  # a read-only folder (tests may run as root, where chmod does not stop writes)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(io.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match="cannot write to output folder"):
        io.check_writable(tmp_path)
