"""`imagegen pull`: download exactly the files a recipe loads on this machine, and tell whether they are there.

What a recipe loads depends on the machine: the precision it runs in (the engine's choice: the repos' fp16 files on
a GPU, Stable Cascade's bf16 ones, full precision on a CPU) and, for the step-distilled repos (SDXL-Lightning,
AnimateDiff-Lightning), the one file its step count picks. The caller passes that choice as a function of the role;
each model's files are sources.download_plan's, exactly what generation would download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imagegen import settings
from imagegen.errors import ModelNotFound
from imagegen.models.sources import (
    DownloadPlan,
    LocalModel,
    ModelRef,
    download,
    fully_cached,
    plan_download,
)

if TYPE_CHECKING:
    from imagegen.models.components import Precision
    from imagegen.recipes.base import Recipe

PrecisionFn = Callable[[str], "Precision"]  # role -> where and how the engine runs that role's model


@dataclass(frozen=True)
class NeededModel:
    """One hub model of a recipe, as this machine would load it."""

    role: str
    ref: ModelRef
    filename: str | None  # RepoKind.FILES: the file for the step count
    variant: str | None  # the half-precision variant's name, None for full precision


@dataclass(frozen=True)
class PulledModel:
    """A model now complete in a cache: its plan (files and sizes) and the folder that holds it."""

    plan: DownloadPlan
    folder: Path


def needed_models(recipe: Recipe, precision: PrecisionFn, steps: int, *, fast: bool = False) -> list[NeededModel]:
    """The hub models `recipe` loads at `steps` steps, and with `fast` those its --fast methods load too (the tiny
    VAE, in the base model's precision); its local models (the built-in digits) need no download."""
    models = dict(recipe.models)
    if fast and recipe.tiny_vae:
        models["tiny_vae"] = recipe.tiny_vae
    return [NeededModel(role, model, model.file_for(steps), precision(role).variant)
            for role, model in models.items() if isinstance(model, ModelRef)]


def is_ready(recipe: Recipe, precision: PrecisionFn) -> bool:
    """Whether every file `recipe` loads at its default steps, in this precision, is on disk: it runs offline and
    `imagegen pull` would fetch nothing."""
    local = [model for model in recipe.models.values() if isinstance(model, LocalModel)]
    return all(model.path.exists() for model in local) and all(
        fully_cached(needed.ref, filename=needed.filename, variant=needed.variant)
        for needed in needed_models(recipe, precision, recipe.defaults.num_inference_steps))


def pull(models: list[NeededModel], source: str) -> list[PulledModel]:
    """Download `models` from hub `source` (a key of sources.HUBS) into its cache.

    Every plan is made before any weights download, so that a missing repo or file fails in seconds, not after
    gigabytes. Files already in the cache are kept and an interrupted download resumes, so running it again is
    cheap. Raises ModelNotFound when offline, when the hub cannot be reached, or when a repo lacks a file.
    """
    if settings.hf_offline():
        raise ModelNotFound("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it to pull")
    plans = []
    for needed in models:
        with _naming(needed.ref):
            plans.append(plan_download(needed.ref, source, filename=needed.filename, variant=needed.variant))
    pulled = []
    for plan in plans:
        with _naming(plan.ref):
            pulled.append(PulledModel(plan, download(plan)))
    return pulled


@contextmanager
def _naming(ref: ModelRef) -> Iterator[None]:
    """A hub's failure ("the Hugging Face hub: ConnectError: ...") as the model that could not be pulled."""
    try:
        yield
    except ModelNotFound as error:
        raise ModelNotFound(f"cannot pull {ref.name} from {error}") from None
