"""Choose the device and dtype a recipe runs in."""

from __future__ import annotations

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
