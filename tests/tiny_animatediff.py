"""Tiny random-weight AnimateDiff repos that fit tiny_sd15's Stable Diffusion 1.5, laid out as the hub has them.

`build_animatediff` writes two repos into a Hugging Face cache the way tiny_models.py writes the SDXL repos:

* ``guoyww/animatediff-motion-adapter-v1-5-2``: a diffusers ``MotionAdapter`` folder, ``config.json`` plus
  ``diffusion_pytorch_model.safetensors`` and ``diffusion_pytorch_model.fp16.safetensors``.  The real repo's
  "fp16" file is as large as the fp32 one (1.82 GB each, 453.8M values: float32 data under the fp16 name), so
  the copy here holds float32 tensors too.  config.json has the real file's keys, written by diffusers
  0.22.0.dev0 (``motion_activation_fn``, ``motion_attention_bias`` and ``motion_cross_attention_dim`` are ones
  current diffusers no longer knows and ignores with a warning), with tiny sizes.
* ``ByteDance/AnimateDiff-Lightning``: loose ``animatediff_lightning_{N}step_diffusers.safetensors`` files for N
  in `LIGHTNING_STEPS`, bare MotionAdapter state dicts in fp16 (908 MB each in the real repo: the same 453.8M
  values at 2 bytes), which its model card loads with a strict ``adapter.load_state_dict``.  The real repo's
  ComfyUI-format twins (``*_comfyui.safetensors``), workflows, report and sample videos are left out.

The adapter's sizes follow the tiny SD 1.5 UNet of tiny_sd15 (two levels of 32 and 64 channels, two layers per
block, a cross-attention mid block), as diffusers' AnimateDiffPipelineFastTests pairs its MotionAdapter with its
tiny UNet; the rest (mid-block motion module, 32 norm groups, 32 positions) is the real v1-5-2 architecture.

Every weight is redrawn from a seeded generator, so no output projection or bias stays at zero (the original
AnimateDiff training zero-initialises the temporal ``proj_out``, which would make the motion modules a no-op;
diffusers' own init leaves norm offsets and biases at zero).  The temporal attention then couples the frames:
with 4 frames and 2 DDIM steps, new noise for frame 0 moves the other three frames by about 9 levels of mean
pixel difference, where zeroed ``proj_out`` weights leave them bit-identical (tests/recipes/test_animatediff_fixtures.py
checks the coupling).  Builds are byte-identical.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiny_models import _build_repo

if TYPE_CHECKING:
    from diffusers import MotionAdapter

MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
ANIMATEDIFF_LIGHTNING = "ByteDance/AnimateDiff-Lightning"
LIGHTNING_STEPS = (1, 2, 4, 8)

# Seed bases apart from the other fixtures' (tiny_models 0-499, tiny_sd15 / tiny_controlnet 1000-1699).
_SEEDS = {MOTION_ADAPTER: 2000, ANIMATEDIFF_LIGHTNING: 2100}

# guoyww/animatediff-motion-adapter-v1-5-2's config.json (455 bytes: diffusers' sorted, 2-space-indented JSON),
# with block_out_channels and the head count cut down to the tiny SD 1.5 UNet's widths.
MOTION_ADAPTER_CONFIG: dict[str, Any] = {
    "_class_name": "MotionAdapter",
    "_diffusers_version": "0.22.0.dev0",
    "block_out_channels": [32, 64],  # tiny_sd15._sd15_unet's; the real [320, 640, 1280, 1280] are SD 1.5's
    "motion_activation_fn": "geglu",
    "motion_attention_bias": False,
    "motion_cross_attention_dim": None,
    "motion_layers_per_block": 2,  # must equal the UNet's layers_per_block
    "motion_max_seq_length": 32,
    "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 4,  # head size 8 and 16, as in diffusers' tiny AnimateDiff tests (real: 8)
    "use_motion_mid_block": True,
}
_BIAS_STD = 0.1


def build_animatediff(cache_dir: Path) -> None:
    """Write the motion adapter and AnimateDiff-Lightning repos into ``cache_dir`` (huggingface_hub's layout),
    replacing earlier builds."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    _build_repo(cache_dir, MOTION_ADAPTER, _write_motion_adapter)
    _build_repo(cache_dir, ANIMATEDIFF_LIGHTNING, _write_lightning_adapters)


def lightning_file_name(steps: int) -> str:
    """The AnimateDiff-Lightning checkpoint for ``steps`` inference steps, as the repo names it."""
    if steps not in LIGHTNING_STEPS:
        raise ValueError(f"AnimateDiff-Lightning has checkpoints for {LIGHTNING_STEPS} steps, not {steps}")
    return f"animatediff_lightning_{steps}step_diffusers.safetensors"


def _write_motion_adapter(folder: Path) -> None:
    adapter = _motion_adapter(_SEEDS[MOTION_ADAPTER])
    adapter.save_pretrained(folder, safe_serialization=True)
    # The real fp16 variant is float32 data (see the module docstring), so no cast before saving it.
    adapter.save_pretrained(folder, safe_serialization=True, variant="fp16")
    (folder / "config.json").write_text(json.dumps(MOTION_ADAPTER_CONFIG, indent=2, sort_keys=True) + "\n")


def _write_lightning_adapters(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    for steps in LIGHTNING_STEPS:
        adapter = _motion_adapter(_SEEDS[ANIMATEDIFF_LIGHTNING] + steps)
        state_dict = {key: tensor.to(torch.float16).contiguous() for key, tensor in adapter.state_dict().items()}
        save_file(state_dict, folder / lightning_file_name(steps))


def _motion_adapter(seed: int) -> MotionAdapter:
    """A MotionAdapter of `MOTION_ADAPTER_CONFIG` with every parameter drawn from ``seed``.

    Matrices get N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2), biases and norm offsets N(0, 0.1^2);
    the sinusoidal position tables stay as diffusers computes them (buffers, which training leaves alone).
    Parameters are drawn in sorted name order, so the weights do not depend on diffusers' module init order.
    """
    import torch
    from diffusers import MotionAdapter

    known = inspect.signature(MotionAdapter.__init__).parameters  # the 0.22 keys current diffusers dropped go
    adapter = MotionAdapter(**{key: value for key, value in MOTION_ADAPTER_CONFIG.items() if key in known})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(adapter.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2:
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(noise / math.sqrt(fan_in))
            elif name.endswith(".weight"):  # GroupNorm / LayerNorm scale
                parameter.copy_(1.0 + _BIAS_STD * noise)
            else:
                parameter.copy_(_BIAS_STD * noise)
    return adapter
