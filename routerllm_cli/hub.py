"""The Hugging Face environment, read the way huggingface_hub and datasets read it: offline mode and cache folders.

Read from the environment at call time (the libraries read it once, at import), so a setting made after
import, or a test's isolated HF_HOME, is what counts. Kept free of the hub libraries: preflight asks before
anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's ENV_VARS_TRUE_VALUES


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _TRUE


def offline() -> bool:
    """huggingface_hub's rule: HF_HUB_OFFLINE, else the older TRANSFORMERS_OFFLINE."""
    return _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def datasets_offline() -> bool:
    """datasets' rule: HF_DATASETS_OFFLINE when it is set, else the hub's."""
    value = os.environ.get("HF_DATASETS_OFFLINE")
    return offline() if value is None else _is_true(value)


def hf_home() -> Path:
    """$HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser()


def cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repos: $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE),
    else $HF_HOME/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else hf_home() / "hub"


def datasets_cache_dir() -> Path:
    """Where datasets keeps prepared datasets: $HF_DATASETS_CACHE, else $HF_HOME/datasets."""
    explicit = os.environ.get("HF_DATASETS_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else hf_home() / "datasets"


def repo_cache(repo_id: str, kind: str = "models") -> Path:
    """The cache folder of one hub repo (`models--org--name`), whether or not it exists."""
    return cache_dir() / f"{kind}--{repo_id.replace('/', '--')}"


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model: the one refs/main names, else the newest; None if absent."""
    if "/" not in repo_id:
        return None
    repo = repo_cache(repo_id)
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None
