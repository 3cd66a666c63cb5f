"""Every environment variable imagegen reads, declared once, read when needed (never at import time).

huggingface_hub reads its variables when it is imported; we read them again at each call so that
a variable set by a test or a long-running server after start-up is still honoured.
"""

from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hf_hub_cache() -> Path:
    """Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hf_offline() -> bool:
    """HF_HUB_OFFLINE=1: never touch the network, only the cache."""
    return _flag("HF_HUB_OFFLINE")


def hf_endpoint() -> str | None:
    """HF_ENDPOINT: a mirror of the Hugging Face hub (None: huggingface_hub's default)."""
    return os.environ.get("HF_ENDPOINT") or None


def modelscope_cache() -> Path:
    """ModelScope's cache root: MODELSCOPE_CACHE, else ~/.cache/modelscope/hub (ModelScope's default)."""
    if os.environ.get("MODELSCOPE_CACHE"):
        return Path(os.environ["MODELSCOPE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "modelscope" / "hub"


def default_output_dir() -> Path:
    """IMAGEGEN_OUTPUT_DIR, else ./outputs: where images go when -o is not given."""
    return Path(os.environ.get("IMAGEGEN_OUTPUT_DIR", "outputs")).expanduser()


def lora_dir() -> Path:
    """IMAGEGEN_LORA_DIR, else ~/.cache/imagegen/loras: where `<lora:NAME:W>` finds NAME.safetensors
    (sub-folders included, as A1111's models/Lora)."""
    return Path(os.environ.get("IMAGEGEN_LORA_DIR") or Path.home() / ".cache" / "imagegen" / "loras").expanduser()


HUB_TIMEOUT_S = 10.0  # a metadata request that takes longer means "unreachable": fail fast, never hang


def compile_cache_dir() -> Path:
    """TORCHINDUCTOR_CACHE_DIR, else ~/.cache/imagegen/torch-compile: where `--fast compile` keeps torch's compiled
    kernels, so that the next process loads them instead of compiling again (torch's own default is under /tmp)."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                or Path.home() / ".cache" / "imagegen" / "torch-compile").expanduser()


def server_threads() -> int:
    """`imagegen serve`'s torch threads: one per core but one, which the HTTP side keeps (benchmarks/threads.py)."""
    return max(1, (os.cpu_count() or 1) - 1)


def header_timeout_s() -> float:
    """IMAGEGEN_HEADER_TIMEOUT_S, else 10: how long the server waits for a request's headers before closing the
    connection (slow mobile links send them in well under a second)."""
    return float(os.environ.get("IMAGEGEN_HEADER_TIMEOUT_S") or 10.0)
