"""Saving and loading: one ``.safetensors`` file per object, weights plus a JSON config, written atomically.

The config travels in the safetensors metadata under the key ``"inrprior"`` and always carries ``"kind"`` (what the
file holds: ``"functions"``, ``"meta"``, ``"hyper"``, a training checkpoint, ...) and ``"format_version"``. Loading
reads tensors and JSON only: nothing is ever unpickled, so a file from an untrusted source cannot run code.

Paths: a path without a suffix gets ``.safetensors`` appended, on saving and on loading; loading a folder looks for
``functions.safetensors`` (functions) or ``prior.safetensors`` (priors) inside it.
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_bytes

from .functions import Functions
from .siren import Siren, batch_size_of

__all__ = [
    "FORMAT_VERSION", "PRIORS", "save_state", "load_state", "save_functions", "load_functions", "register_prior",
    "save_prior", "load_prior", "load", "check_writable", "prior_to_state", "restore_prior_state",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_KEY = "inrprior"
SUFFIX = ".safetensors"
PRIORS: dict[str, type] = {}
# Modules that register the built-in priors when imported; load_prior imports them on demand.
_BUILTIN_PRIORS = {"meta": "inrprior.meta", "hyper": "inrprior.hyper"}


def _file_path(path, default_name: str | None = None) -> Path:
    path = Path(path)
    if default_name is not None and path.is_dir():
        return path / default_name
    if path.suffix == "" and not path.exists():
        return path.with_name(path.name + SUFFIX)
    return path


def save_state(path, tensors: dict[str, torch.Tensor], config: dict[str, Any],
               default_name: str | None = None) -> Path:
    """Write tensors and a JSON config to one safetensors file, atomically.

    The file is written to a temporary file in the same folder, flushed to disk and renamed over ``path``, so a
    crash or full disk mid-write leaves any previous file intact.

    Args:
        path: target file (``.safetensors`` is appended when it has no suffix); parent folders are created.
        tensors: name -> tensor (moved to CPU and made contiguous; shared storage is copied).
        config: JSON-able dict with a ``"kind"`` entry; ``"format_version"`` is added.
        default_name: when ``path`` is an existing folder, the file name to write inside it.
    Returns:
        The path written.
    """
    path = _file_path(path, default_name)
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise ValueError("save_state needs a config dict with a string 'kind'")
    config = {**config, "format_version": config.get("format_version", FORMAT_VERSION)}
    try:
        meta = json.dumps(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config for {path} is not JSON-serializable: {e}") from None
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {k!r} is a {type(t).__name__}, not a torch.Tensor")
    data = _safetensors_bytes({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()},
                              metadata={META_KEY: meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the permissions any other output gets
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _folder_hint(folder: Path) -> str:
    """What a folder that lacks the file asked for does hold, and the command for it."""
    if (folder / f"prior{SUFFIX}").is_file():
        return f" (it holds a trained prior: sample it with `inrprior sample {folder}`, or load it with ip.load)"
    if (folder / f"functions{SUFFIX}").is_file():
        return f" (it holds fitted functions: render them with `inrprior render {folder}`)"
    if (folder / "checkpoint.safetensors").is_file():
        return " (a run that has not finished: continue it with `inrprior train ... --resume`)"
    return ""


def load_state(path, kind: str | tuple[str, ...] | None = None, device=None,
               default_name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_state`.

    Args:
        path: the file (a missing suffix means ``.safetensors``).
        kind: the kind (or kinds) expected; anything else is an error.
        device: where to put the tensors (default CPU).
        default_name: when ``path`` is a folder, the file name to look for inside it.
    Returns:
        ``(tensors, config)``.
    Raises:
        FileNotFoundError: missing file. ValueError: not a safetensors file, not an inrprior file, a newer format
        version, or the wrong kind.
    """
    given, path = path, _file_path(path, default_name)
    if not path.is_file():
        if path.is_dir():
            raise FileNotFoundError(f"{path} is a folder, not a file")
        if Path(given).is_dir():
            raise FileNotFoundError(f"folder {given} has no {path.name}{_folder_hint(Path(given))}")
        also = f" (nor {path.name})" if str(path) != str(given) else ""
        raise FileNotFoundError(f"{given}{also} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if META_KEY not in meta:
                raise ValueError(f"{path} is a safetensors file but not an inrprior file (no '{META_KEY}' metadata)")
            tensors = {k: f.get_tensor(k) for k in names}
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error type for corrupt headers and truncated files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or another format: {reason})") from None
    try:
        config = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise ValueError(f"{path} has corrupt inrprior metadata (not JSON)") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"{path} has inrprior metadata without a 'kind'")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}, newer than this inrprior reads "
                         f"({FORMAT_VERSION}); upgrade inrprior")
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if config["kind"] not in kinds:
            raise ValueError(f"{path} holds {config['kind']!r}, expected {' or '.join(map(repr, kinds))}"
                             f"{kind_hint(config['kind'])}")
    return tensors, config


_PRIOR_HINT = "a prior: sample from it with `inrprior sample` or fit images with `inrprior adapt`"
_KIND_HINTS = {"checkpoint": "a training checkpoint: use the run's prior.safetensors, or continue training with "
                              "`inrprior train ... --resume`",
               "meta": _PRIOR_HINT, "hyper": _PRIOR_HINT,
               "functions": "fitted functions: render them with `inrprior render`"}


def kind_hint(kind: str) -> str:
    """`` (what a file of this kind is and what reads it)`` for error messages; empty for unknown kinds."""
    return f" ({_KIND_HINTS[kind]})" if kind in _KIND_HINTS else ""


def _describe(config: dict) -> str:
    c = config
    try:
        return (f"Siren({c['in_features']}->{c['out_features']}, {c['hidden_layers']}x{c['hidden_features']}, "
                f"w0={c['w0']})")
    except KeyError:
        return repr(config)


def save_functions(functions: Functions, path) -> Path:
    """Save a batch of functions (architecture config + parameters) to ``path``; see :func:`save_state`."""
    if not isinstance(functions, Functions):
        raise TypeError(f"save_functions needs Functions, got {type(functions).__name__}")
    config = {"kind": "functions", "siren": dict(functions.net.config), "batch_size": len(functions)}
    return save_state(path, functions.params, config, default_name="functions" + SUFFIX)


def load_functions(path, device=None, net: Siren | None = None) -> Functions:
    """Load functions saved by :func:`save_functions` (or ``Functions.save``).

    Args:
        path: the file, or a folder holding ``functions.safetensors``.
        device: where to put them (default CPU).
        net: an existing architecture to load into; it must match the saved one.
    Returns:
        :class:`Functions`.
    """
    tensors, config = load_state(path, kind="functions", device=device, default_name="functions" + SUFFIX)
    saved = config.get("siren")
    if not isinstance(saved, dict):
        raise ValueError(f"{path} has no SIREN architecture in its config")
    if net is None:
        try:
            net = Siren(**saved)
        except TypeError as e:
            raise ValueError(f"{path} has an unknown SIREN config {saved}: {e}") from None
    elif dict(net.config) != saved:
        raise ValueError(f"{path} holds functions of {_describe(saved)}, but the given net is "
                         f"{_describe(net.config)}")
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    where, own = torch.device(device or "cpu"), next(net.parameters())
    if (own.device, own.dtype) != (where, dtype):  # a copy: the caller's net (a prior's, say) stays as it is
        net = copy.deepcopy(net).to(where, dtype)
    try:
        batch_size_of(tensors, net)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return Functions(net, tensors)


def register_prior(kind: str, cls: type) -> type:
    """Make :func:`load_prior` build ``cls.from_state(tensors, config)`` for files whose config kind is ``kind``."""
    if not (hasattr(cls, "to_state") and hasattr(cls, "from_state")):
        raise TypeError(f"{cls.__name__} must implement to_state() and from_state()")
    PRIORS[kind] = cls
    return cls


def prior_to_state(prior) -> tuple[dict[str, torch.Tensor], dict]:
    """What every prior saves: its module's ``state_dict`` under ``model.`` and, once fitted, its sampling density
    under ``density.`` (with the density's config in ``config["density"]``)."""
    tensors = {f"model.{k}": v for k, v in prior.state_dict().items()}
    config = prior.config
    if prior.density is not None:
        dt, dc = prior.density.to_state()
        tensors.update({f"density.{k}": v for k, v in dt.items()})
        config["density"] = dc
    return tensors, config


def restore_prior_state(prior, tensors: dict[str, torch.Tensor], config: dict):
    """Load what :func:`prior_to_state` saved into a freshly built ``prior`` (in the saved dtype); returns it."""
    from .density import density_from_state

    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not model:
        raise ValueError("the file holds no model tensors")
    try:
        prior.to(next(iter(model.values())).dtype).load_state_dict(model)
    except RuntimeError as e:  # names or shapes that the config's architecture does not have
        raise ValueError(f"its tensors do not match its config ({' '.join(str(e).split())[:300]})") from None
    if config.get("density") is not None:
        prior.density = density_from_state({k[len("density."):]: v for k, v in tensors.items()
                                            if k.startswith("density.")}, config["density"])
    return prior


def save_prior(prior, path) -> Path:
    """Save a prior through its ``to_state()``; its config ``"kind"`` decides the class on loading."""
    tensors, config = prior.to_state()
    return save_state(path, tensors, config, default_name="prior" + SUFFIX)


def load_prior(path, device=None):
    """Load a prior saved by :func:`save_prior`; the class comes from the registry :data:`PRIORS`.

    Args:
        path: the file, or a folder holding ``prior.safetensors``.
        device: where to put it (default CPU).
    """
    tensors, config = load_state(path, device=device, default_name="prior" + SUFFIX)
    kind = config["kind"]
    if kind not in PRIORS and kind in _BUILTIN_PRIORS:
        try:
            importlib.import_module(_BUILTIN_PRIORS[kind])
        except ImportError as e:
            log.debug("could not import %s: %s", _BUILTIN_PRIORS[kind], e)
    if kind not in PRIORS:
        known = ", ".join(sorted(PRIORS)) or "none registered"
        raise ValueError(f"{path} holds {kind!r}, which is not a known prior kind ({known}){kind_hint(kind)}")
    try:
        prior = PRIORS[kind].from_state(tensors, config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return prior.to(device) if device is not None and hasattr(prior, "to") else prior


def load(path, device=None):
    """Load whatever ``path`` holds: :class:`Functions` or a prior (dispatching on the stored kind)."""
    file = _file_path(path)
    if file.is_dir():
        for name, loader in (("prior", load_prior), ("functions", load_functions)):
            if (file / (name + SUFFIX)).is_file():
                return loader(file / (name + SUFFIX), device=device)
        raise FileNotFoundError(f"{file} holds neither prior{SUFFIX} nor functions{SUFFIX}{_folder_hint(file)}")
    _, config = load_state(file)  # validates; the tensors are read again by the loader (files are small)
    if config["kind"] == "functions":
        return load_functions(file, device=device)
    return load_prior(file, device=device)


def check_writable(folder, min_free_mb: float = 100) -> Path:
    """Create ``folder`` if needed and check that files can be written there, with at least ``min_free_mb`` MB free.

    Call it before long jobs so that they fail at once instead of at their first checkpoint.

    Returns:
        The folder as a :class:`Path`.
    Raises:
        PermissionError / NotADirectoryError / OSError with a one-line message naming the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"cannot use output folder {folder}: a file of that name exists") from None
    except OSError as e:
        raise type(e)(f"cannot create output folder {folder}: {e.strerror or e}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(f"cannot write to output folder {folder}: {e.strerror or e}") from None
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(f"only {free_mb:.0f} MB free on the disk of {folder}; need {min_free_mb:.0f} MB")
    return folder
