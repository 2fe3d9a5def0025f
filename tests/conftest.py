"""Test-session settings: torch.compile's cache lives in the checkout (ignored by git), not in the shared /tmp."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "inductor"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests: a second OpenMP thread only adds synchronization, and
    stalls badly on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
