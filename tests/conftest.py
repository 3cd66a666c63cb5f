"""Session fixtures: the tiny random-weight models, in a Hugging Face cache under the real repo ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_animatediff import build_animatediff
from tiny_cascade import build_cascade
from tiny_controlnet import build_controlnets
from tiny_models import build_hf_cache
from tiny_sd15 import build_sd15
from tiny_svd import build_svd


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A built cache that imagegen, diffusers' ``from_pretrained(repo_id)`` and subprocesses all find offline.

    huggingface_hub copies ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when it is
    first imported, so the constants are patched too; the environment is set for imagegen and subprocesses.
    An empty ModelScope cache keeps a developer's own caches out of the tests.
    """
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf_cache")
    build_hf_cache(cache)
    for build in (build_sd15, build_cascade, build_controlnets, build_svd, build_animatediff):
        build(cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MODELSCOPE_CACHE", str(tmp_path_factory.mktemp("modelscope_empty")))
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield cache


@pytest.fixture(scope="session")
def engine(hf_cache: Path):  # noqa: ANN201 - imagegen.Engine, imported lazily like the package does
    """One CPU float32 engine shared by the tests, as a long-running process would share it."""
    from imagegen.engine import Engine, EngineOptions

    return Engine(EngineOptions(device="cpu"))
