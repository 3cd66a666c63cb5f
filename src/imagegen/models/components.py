"""Load pipeline components once and share them between pipelines.

SDXL, LCM-SDXL and SDXL-Lightning differ only in their UNet and scheduler: the text encoders, tokenizers
and VAE of the SDXL base are loaded once and referenced by every pipeline assembled from them. Components
are held weakly: one stays in memory exactly as long as some cached pipeline uses it.
"""

from __future__ import annotations

import importlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.errors import ModelNotFound, UnsafeWeights
from imagegen.models.config_repairs import config_overrides
from imagegen.models.sources import LocalModel, ModelRef, check_weights_file, locate

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Where a model_index.json may take its component classes from: importing any other module by name
# would let a downloaded folder run code of its choosing.
_LIBRARIES = ("diffusers", "transformers", "imagegen")


@dataclass(frozen=True)
class Precision:
    """Where components run and in which dtype; part of every cache key."""

    device: str
    dtype: str  # "float32", "float16" or "bfloat16"
    offload: str = "none"  # an offloaded pipeline's modules move between devices: never share them with others
    half_variant: str = "fp16"  # the name of the repo's half-precision files (Stable Cascade's are "bf16")
    # The --fast methods that change a loaded model in place (quantise, compile): such components are never shared
    # with pipelines that run without them.
    treated: str = ""

    @property
    def variant(self) -> str | None:
        """Repos publish half-precision copies as a variant; use them whenever we run in half."""
        return self.half_variant if self.dtype in ("float16", "bfloat16") else None

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


class ComponentStore:
    """Loads components by (folder, sub-folder, precision) and hands out the same object while it lives."""

    def __init__(self, *, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self._live: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
        self.loads = 0  # how many components were read from disk: lets tests prove sharing

    def folder(self, model: ModelRef | LocalModel, precision: Precision, *, filename: str | None = None) -> Path:
        """The local folder of a model, fetched if needed and allowed."""
        if isinstance(model, LocalModel):
            return model.path
        return locate(model, filename=filename, variant=precision.variant, allow_pickle=self.allow_pickle)

    def pipeline_components(self, folder: Path, precision: Precision, *, skip: set[str] = frozenset()) -> dict[str, Any]:
        """Every component listed in a pipeline folder's model_index.json (but `skip`), plus its init flags."""
        index = _read_json(folder / "model_index.json")
        parts: dict[str, Any] = {}
        for name, value in index.items():
            if name.startswith("_") or name in skip:
                continue
            if isinstance(value, list):
                if len(value) != 2:
                    raise ModelNotFound(f"{folder / 'model_index.json'}: entry {name!r} is not [library, class]")
                library, class_name = value
                parts[name] = None if library is None else self.component(folder, name, library, class_name, precision)
            else:
                parts[name] = value  # flags such as force_zeros_for_empty_prompt
        return parts

    def component(self, folder: Path, subfolder: str | None, library: str, class_name: str,
                  precision: Precision) -> Any:
        """One component; `subfolder` None means the model sits at the folder's root (a UNet-only repo)."""
        key = (str(folder), subfolder, library, class_name, precision)
        found = self._live.get(key)
        if found is None:
            found = self._load(folder, subfolder, library, class_name, precision)
            if _is_weakrefable(found):
                self._live[key] = found
        return found

    def model_from_file(self, weights: Path, config_folder: Path, precision: Precision, *,
                        class_name: str = "UNet2DConditionModel", subfolder: str | None = "unet") -> Any:
        """A model whose architecture is a folder's config and whose weights are one loose state-dict file
        (SDXL-Lightning's UNets, AnimateDiff-Lightning's motion adapters)."""
        key = (str(weights), class_name, str(config_folder), subfolder, precision)
        found = self._live.get(key)
        if found is None:
            import diffusers
            import torch
            from safetensors import safe_open

            check_weights_file(weights, allow_pickle=False)
            cls = getattr(diffusers, class_name)
            with torch.device("meta"):
                model = cls.from_config(cls.load_config(config_folder, subfolder=subfolder))
            # Built on the meta device and filled by assignment: a full-size random init would cost seconds.
            # Converted tensor by tensor, so the file's fp16 copy never sits in memory beside the result.
            with safe_open(weights, framework="pt") as file:
                state = {key: file.get_tensor(key).to(precision.torch_dtype()) for key in file.keys()}
            try:
                model.load_state_dict(state, assign=True)
            except RuntimeError as error:  # missing, unexpected or mis-shaped weights
                raise ModelNotFound(f"{weights} does not hold weights for the {class_name} of {config_folder}: "
                                    f"{str(error).splitlines()[0][:200]}") from None
            found = model.eval()
            self.loads += 1
            self._live[key] = found
        return found

    def _load(self, folder: Path, subfolder: str | None, library: str, class_name: str, precision: Precision) -> Any:
        cls = _component_class(folder, library, class_name)
        root = cls.__module__.split(".")[0]
        path = folder / subfolder if subfolder else folder
        if not path.is_dir():
            raise ModelNotFound(f"{folder} has no '{subfolder}' folder, which its model_index.json lists")
        if root == "imagegen":
            return self._load_own(cls, path, precision)
        if root == "diffusers":
            from diffusers import SchedulerMixin

            if issubclass(cls, SchedulerMixin):
                return cls.from_pretrained(path)
        if not _holds_weights(path):
            import torch

            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                raise ModelNotFound(f"{path} has no weights (an interrupted or partial download?); "
                                    "download the model again")
            return cls.from_pretrained(path)  # tokenizers, feature extractors
        variant = _variant_present(path, precision.variant)
        use_safetensors = self._use_safetensors(path, variant)
        self.loads += 1
        # transformers reads `dtype`; without it, a config recording float16 would load in float16 on CPU.
        dtype_argument = "torch_dtype" if root == "diffusers" else "dtype"
        return cls.from_pretrained(path, **{dtype_argument: precision.torch_dtype()}, variant=variant,
                                   use_safetensors=use_safetensors, **config_overrides(cls, path))

    def _load_own(self, cls: type, path: Path, precision: Precision) -> Any:
        """imagegen's own classes (the built-in model's), which need no diffusers: `from_pretrained(path)`, plus
        `torch_dtype=` for those with weights, which must be safetensors."""
        if not _holds_weights(path):
            return cls.from_pretrained(path)  # schedulers
        if not any(p.suffix == ".safetensors" for p in path.iterdir()):
            raise UnsafeWeights(f"{path} has pickle weights only (.bin); imagegen's own model classes read "
                                "safetensors only: convert them")
        self.loads += 1
        return cls.from_pretrained(path, torch_dtype=precision.torch_dtype())

    def _use_safetensors(self, path: Path, variant: str | None) -> bool | None:
        infix = f".{variant}" if variant else ""
        if any(p.name.endswith(f"{infix}.safetensors") for p in path.iterdir()):
            return True
        if self.allow_pickle:
            return None
        raise UnsafeWeights(
            f"{path} has pickle weights only (.bin), which can run arbitrary code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust their source"
        )


def _component_class(folder: Path, library: str, class_name: str) -> type:
    """The class a model_index.json entry names, from our allowed libraries only.

    diffusers names some components by the pipeline module that defines them ("stable_diffusion" for the
    safety checker, "wuerstchen" for Stable Cascade's VQGAN); such modules may since have moved under
    diffusers.pipelines.deprecated.
    """
    if library.split(".")[0] in _LIBRARIES:
        modules = [library]
    elif library.isidentifier():
        modules = [f"diffusers.pipelines.{library}", f"diffusers.pipelines.deprecated.{library}"]
    else:
        modules = []
    for module in modules:
        try:
            return getattr(importlib.import_module(module), class_name)
        except (ImportError, AttributeError):
            continue
    if not modules:
        raise ModelNotFound(f"{folder}'s model_index.json names {library}.{class_name}; components may come "
                            f"from {', '.join(_LIBRARIES)} (or diffusers' pipeline modules) only")
    raise ModelNotFound(f"{folder}'s model_index.json names {library}.{class_name}, which this "
                        f"installation does not have (a newer {library.split('.')[0]}?)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFound(f"{path.parent} is not a diffusers model folder: it has no {path.name}") from None
    except json.JSONDecodeError as error:
        raise ModelNotFound(f"{path} is not valid JSON: {error}") from None


def _holds_weights(path: Path) -> bool:
    return any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir())


def _variant_present(path: Path, wanted: str | None) -> str | None:
    """The wanted variant if its files are there, else the default files, else any variant there is.

    A cache holding only the fp16 files still works in float32: they are loaded and upcast.
    """
    names = [p.name for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
    if wanted and any(f".{wanted}." in n for n in names):
        return wanted
    if any(n.count(".") == 1 for n in names):
        return None
    return next((n.split(".")[-2] for n in names if n.count(".") == 2), None)


def _is_weakrefable(value: Any) -> bool:
    try:
        weakref.ref(value)
    except TypeError:
        return False
    return True
