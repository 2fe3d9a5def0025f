"""Shared bits of the dataset recipes (run as scripts; this folder is not an importable package)."""
import argparse
import sys
from pathlib import Path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("root", type=Path, help="folder to put the dataset in (pass the same ROOT to inrprior)")
    return p


def check(spec: str) -> None:
    """Load both splits through inrprior.data exactly as training will, and report their sizes."""
    try:
        from inrprior import data
    except ImportError:
        print("inrprior is not installed here; skipping the check")
        return
    for split in ("train", "test"):
        ds = data.load(spec, size=32, split=split)
        shape = f", each {tuple(ds[0].shape)} after resizing to 32" if len(ds) else ""
        print(f"{spec} {split}: {len(ds)} images{shape}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
