"""Choose the device and dtype a recipe runs in."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from imagegen.errors import InvalidRequest

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def pick_device(requested: str = "auto") -> str:
    """CUDA, then Apple's MPS, then the CPU; an explicit choice that is not available is an error."""
    import torch

    kind = requested.split(":")[0]
    if kind not in DEVICES:
        raise InvalidRequest(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest("device cuda was asked for, but torch sees no CUDA GPU")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequest("device mps was asked for, but this machine has no MPS device")
    return requested


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there bfloat16 runs about twice as fast as
    float32; elsewhere torch emulates it, slower than float32, so it is never assumed."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def pick_dtype(device: str, requested: str, recipe_gpu_dtype: str) -> str:
    """float32 on the CPU (the reference code's precision there; `--fast bf16` opts into bfloat16 where the CPU has
    it natively), the recipe's half type on a GPU."""
    if requested not in DTYPES:
        raise InvalidRequest(f"unknown dtype {requested!r}; choose one of {', '.join(DTYPES)}")
    if requested != "auto":
        return requested
    if device.startswith("cpu"):
        return "float32"
    if device.startswith("mps"):
        return "float16"  # MPS has no fast bfloat16 on most machines
    return recipe_gpu_dtype


def fp8_unsupported(device: str) -> str | None:
    """Why `device` cannot run fp8 matrix products (torchao's float8 needs compute capability 8.9+: Ada, Hopper and
    later), or None."""
    import torch

    if not device.startswith("cuda"):
        return f"needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper), not {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; fp8 needs 8.9+"
    return None


# torch.nn.attention.SDPBackend members by the name `--attention` takes. auto: torch's own choice per call (the
# reference code's). On a GPU, flash and cudnn are the fast ones (half precision only); efficient also runs in float32;
# math is the slow reference.
SDPA_BACKENDS = {"auto": None, "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def sdpa_backend(name: str) -> AbstractContextManager[Any]:
    """Scaled-dot-product attention restricted to one kernel: a call it cannot serve fails with torch's reason
    instead of silently taking another."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name]))


def use_threads(threads: int) -> None:
    """torch's CPU thread pools: `threads` for the work inside an operation and between operations. The inter-op
    pool can be sized only before its first use; later it keeps its size."""
    import torch

    if threads < 1:
        raise InvalidRequest(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already in use in this process
        pass
