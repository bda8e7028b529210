"""Where diffuzz keeps what it builds or fetches outside the checkout (never under it: a fresh
clone and the next machine rebuild it): $DIFFUZZ_CACHE, else $XDG_CACHE_HOME/diffuzz, else
~/.cache/diffuzz."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("DIFFUZZ_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffuzz"
