"""Session fixtures: the tiny random-weight models in a Hugging Face cache under the real repo ids, each family built
the first time a test asks for it; and the switch that skips the tests marked ``slow``.

A test asks for the families it loads (``sdxl_models``, ``sd15_models``, ...); each returns the cache folder. The
families write into one cache, so a test that asks for two finds both there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_animatediff import build_animatediff
from tiny_cascade import build_cascade
from tiny_controlnet import build_controlnets
from tiny_models import build_hf_cache
from tiny_sd15 import build_sd15
from tiny_svd import build_svd
from tiny_taesd import build_taesd

SLOW_TESTS_VARIABLE = "IMAGEGEN_SLOW_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``slow`` unless IMAGEGEN_SLOW_TESTS=1 (CI sets it: .ci/run runs every test)."""
    if os.environ.get(SLOW_TESTS_VARIABLE) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow: set {SLOW_TESTS_VARIABLE}=1 to run it")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def offline_hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty cache that imagegen, diffusers' ``from_pretrained(repo_id)`` and subprocesses all find offline; the
    family fixtures below build into it.

    huggingface_hub copies ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when it is
    first imported, so the constants are patched too; the environment is set for imagegen and subprocesses.
    An empty ModelScope cache keeps a developer's own caches out of the tests.
    """
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MODELSCOPE_CACHE", str(tmp_path_factory.mktemp("modelscope_empty")))
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield cache


@pytest.fixture(scope="session")
def sdxl_models(offline_hf_cache: Path) -> Path:
    """SDXL base, SDXL-Turbo, LCM-SDXL, SDXL-Lightning and DiT-XL-2-256 (tiny_models)."""
    build_hf_cache(offline_hf_cache)
    return offline_hf_cache


@pytest.fixture(scope="session")
def sd15_models(offline_hf_cache: Path) -> Path:
    """Stable Diffusion 1.5 (tiny_sd15)."""
    build_sd15(offline_hf_cache)
    return offline_hf_cache


@pytest.fixture(scope="session")
def cascade_models(offline_hf_cache: Path) -> Path:
    """Stable Cascade's prior and decoder (tiny_cascade)."""
    build_cascade(offline_hf_cache)
    return offline_hf_cache


@pytest.fixture(scope="session")
def controlnet_models(sdxl_models: Path) -> Path:
    """The canny and depth SDXL ControlNets and the fp16-fix VAE (tiny_controlnet), beside the SDXL base they
    steer."""
    build_controlnets(sdxl_models)
    return sdxl_models


@pytest.fixture(scope="session")
def svd_models(offline_hf_cache: Path) -> Path:
    """Stable Video Diffusion XT (tiny_svd)."""
    build_svd(offline_hf_cache)
    return offline_hf_cache


@pytest.fixture(scope="session")
def animatediff_models(sd15_models: Path) -> Path:
    """The AnimateDiff motion adapter and AnimateDiff-Lightning (tiny_animatediff), beside the SD 1.5 they animate."""
    build_animatediff(sd15_models)
    return sd15_models


@pytest.fixture(scope="session")
def taesd_models(offline_hf_cache: Path) -> Path:
    """TAESD and TAESDXL, the tiny VAEs of --fast tiny-vae (tiny_taesd)."""
    build_taesd(offline_hf_cache)
    return offline_hf_cache


@pytest.fixture(scope="session")
def hf_cache(sdxl_models: Path, sd15_models: Path, cascade_models: Path) -> Path:
    """The SDXL family, SD 1.5 and Stable Cascade: what the tests of the server and of `imagegen pull` load (they ask
    for the cache by this name)."""
    return sdxl_models


@pytest.fixture(scope="session")
def engine(offline_hf_cache: Path):  # noqa: ANN201 - imagegen.Engine, imported lazily like the package does
    """One CPU float32 engine shared by the tests, as a long-running process would share it; a test asks for the
    model families it runs as well."""
    from imagegen.engine import Engine, EngineOptions

    return Engine(EngineOptions(device="cpu"))
