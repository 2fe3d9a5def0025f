"""Test-session settings: torch.compile's cache lives in the checkout (ignored by git), not in the shared /tmp."""
import os
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "inductor"))
