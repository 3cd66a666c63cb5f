"""Step caching: between two steps the denoiser's deep features barely change, so most steps can reuse them.

Both methods hold state only for the length of one pipeline call (entered per call, undone after), so nothing leaks
between jobs, and the loaded models stay exactly those the default path shares.
- UNets (SDXL, SD 1.5, ControlNet, AnimateDiff): DeepCache (Ma et al. 2023; the DeepCache package, Apache-2.0).
  Every `DEEPCACHE_INTERVAL`-th step runs the whole UNet; the others run only its outermost layers (branch 0) on
  the deep features cached at the last full step.
- DiT: diffusers' first-block cache: the first transformer block always runs, and when its output changed by less
  than `FIRST_BLOCK_THRESHOLD` (relative) since the last full step, the other blocks' residual is reused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEEPCACHE_INTERVAL = 3  # the DeepCache paper's setting for 50 PLMS steps: ~2.3x at a small quality cost
DEEPCACHE_BRANCH = 0  # the shallowest branch: the most reuse
FIRST_BLOCK_THRESHOLD = 0.1  # ParaAttention's range for image DiTs (0.08-0.12): higher skips more


@contextmanager
def deep_cache(pipe: Any) -> Iterator[None]:
    """DeepCache on `pipe.unet` for one call; its step counter reads `pipe.scheduler`, the one this call uses."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=DEEPCACHE_INTERVAL, cache_branch_id=DEEPCACHE_BRANCH)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@contextmanager
def first_block_cache(pipe: Any) -> Iterator[None]:
    """diffusers' first-block cache on `pipe.transformer` for one call.

    DiT's transformer is no CacheMixin in diffusers (no `enable_cache`), so this applies and removes the hooks as
    `CacheMixin.enable_cache` / `disable_cache` do. imagegen's DiT loop evaluates the conditional and unconditional
    halves in one batch, hence one cache context for the whole call.
    """
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        HookRegistry,
        apply_first_block_cache,
    )
    from diffusers.hooks.first_block_cache import (
        _FBC_BLOCK_HOOK,
        _FBC_LEADER_BLOCK_HOOK,
    )
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    transformer = pipe.transformer
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD))
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.invalidate_child_registries_cache()
    _set_cache_context(transformer, CacheContext("guided"))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)
        for hook in (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK):
            registry.remove_hook(hook, recurse=True)
        registry.invalidate_child_registries_cache()


STEP_CACHES = {"deepcache": deep_cache, "first-block": first_block_cache}  # Recipe.step_cache -> per-call context
