"""Find a model's files: an explicit local path, the Hugging Face cache or hub, or ModelScope.

Order: a local path given by the user; the Hugging Face cache; the ModelScope cache; then, unless
HF_HUB_OFFLINE is set, the Hugging Face hub and ModelScope (when its extra is installed). A model
found nowhere raises ModelNotFound naming the model, every place looked at and how to get it.
Weights are safetensors only unless the caller explicitly allows pickle files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from imagegen import settings
from imagegen.errors import ModelNotFound, UnsafeWeights

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
_METADATA_PATTERNS = ["*.json", "*.txt", "tokenizer*/*"]


class RepoKind(Enum):
    """How a repository is laid out, which decides what to fetch from it."""

    PIPELINE = "pipeline"  # model_index.json and one sub-folder per component
    MODEL = "model"  # one model's config.json and weights at the repo root (e.g. lcm-sdxl's UNet)
    FILES = "files"  # loose weight files at the root; the recipe names the one it needs (SDXL-Lightning)


@dataclass(frozen=True)
class ModelRef:
    """A published model: its Hugging Face repo id and, where there is one, its ModelScope mirror."""

    hf_id: str
    modelscope_id: str | None = None
    kind: RepoKind = RepoKind.PIPELINE
    file_pattern: str | None = None  # RepoKind.FILES: the file to use, "{steps}" standing for the step count
    subfolder: str | None = None  # where in the repo the model sits (ModelScope's majicmixRealistic_v6 keeps it in v7/)
    half_variant: str = "fp16"  # the variant name of the repo's half-precision weights

    def file_for(self, steps: int) -> str | None:
        return self.file_pattern.format(steps=steps) if self.file_pattern else None

    @property
    def name(self) -> str:
        return f"{self.hf_id}/{self.subfolder}" if self.subfolder else self.hf_id


@dataclass(frozen=True)
class LocalModel:
    """A model the user points at on disk: a diffusers folder or a single checkpoint file."""

    path: Path
    label: str | None = None  # how infotext names a model that ships with imagegen (no machine's path)

    @property
    def name(self) -> str:
        return self.label or str(self.path)

    @property
    def is_single_file(self) -> bool:
        return self.path.is_file()


def parse_model_argument(value: str, *, allow_pickle: bool = False) -> ModelRef | LocalModel:
    """Interpret `--model`: an existing path is local; 'org/name' is a hub id; anything else is an error."""
    path = Path(value).expanduser()
    if path.exists():
        check_weights_file(path, allow_pickle=allow_pickle)
        return LocalModel(path.resolve())
    looks_like_path = value.startswith((".", "/", "~")) or value.endswith((".safetensors", *PICKLE_SUFFIXES))
    parts = value.split("/")
    if looks_like_path or len(parts) < 2 or not all(parts) or {".", ".."} & set(parts):
        raise ModelNotFound(
            f"model {value!r}: no such file or folder, and it is not a hub id of the form 'org/name[/subfolder]'"
        )
    # The same id is tried on both hubs: many models (the seed's majicmixRealistic_v6) exist on ModelScope only.
    repo = "/".join(parts[:2])
    return ModelRef(repo, repo, subfolder="/".join(parts[2:]) or None)


def check_weights_file(path: Path, *, allow_pickle: bool) -> None:
    """Refuse pickle checkpoints, which can run arbitrary code when loaded, unless explicitly allowed."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeWeights(
            f"{path} is a pickle checkpoint, which can run arbitrary code when loaded; "
            "use a .safetensors file, or pass --allow-pickle if you trust its source"
        )
    if path.is_file() and path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
        raise ModelNotFound(f"{path} is neither a model folder nor a .safetensors checkpoint")


def locate(ref: ModelRef, *, filename: str | None = None, variant: str | None = None,
           allow_pickle: bool = False) -> Path:
    """Return the local folder holding `ref` (and `filename` in it, for RepoKind.FILES), fetching if allowed."""
    looked: list[str] = []
    found = find_cached(ref, filename=filename, looked=looked)
    if found is not None:
        return found
    if settings.hf_offline():
        looked.append("the Hugging Face hub: not asked, HF_HUB_OFFLINE is set")
    else:
        for fetch in (_hf_fetch, _modelscope_fetch):
            # "*" matches "/" in hub patterns, so full precision must exclude the half-precision copies itself.
            ignore = [] if variant else ["*.fp16.*"]
            folder = fetch(ref, _patterns(ref, filename, variant, allow_pickle), looked, ignore)
            if folder is not None and _holds(folder, ref, filename):
                _fetch_missing_defaults(ref, folder, variant, allow_pickle)
                return _inside(folder, ref)
    how = f"`hf download {ref.hf_id}`"
    if ref.modelscope_id:
        how += f" or `modelscope download --model {ref.modelscope_id}`"
    raise ModelNotFound(
        f"model {ref.hf_id}{' file ' + filename if filename else ''} is not available. "
        f"Looked in: {'; '.join(looked)}. Get it with {how} on a machine with network access "
        "(then copy the cache), or pass --model with a local path"
    )


def available_locally(model: ModelRef | LocalModel, *, steps: int) -> bool:
    """Whether `model` can be loaded without the network (for a FILES repo: its file for `steps`)."""
    if isinstance(model, LocalModel):
        return model.path.exists()
    return find_cached(model, filename=model.file_for(steps)) is not None


def find_cached(ref: ModelRef, *, filename: str | None = None, looked: list[str] | None = None) -> Path | None:
    """The model's folder if a cache already holds it; never touches the network."""
    looked = [] if looked is None else looked
    for folder in (_hf_cached(ref, looked), _modelscope_cached(ref, looked)):
        if folder is not None and _holds(folder, ref, filename):
            return _inside(folder, ref)
    return None


def _holds(folder: Path, ref: ModelRef, filename: str | None) -> bool:
    """Whether the repo folder has the model: its marker file, or for loose files any safetensors file."""
    model = _inside(folder, ref)
    if ref.kind is RepoKind.FILES and filename is None:
        return any(model.glob("*.safetensors"))
    return (model / (filename or ("model_index.json" if ref.kind is RepoKind.PIPELINE else "config.json"))).is_file()


def _inside(folder: Path, ref: ModelRef) -> Path:
    return folder / ref.subfolder if ref.subfolder else folder


def _hf_cached(ref: ModelRef, looked: list[str]) -> Path | None:
    cache = settings.hf_hub_cache()
    looked.append(f"Hugging Face cache {cache}")
    snapshots = cache / f"models--{ref.hf_id.replace('/', '--')}"
    ref_file = snapshots / "refs" / "main"
    if ref_file.is_file():
        folder = snapshots / "snapshots" / ref_file.read_text().strip()
        if folder.is_dir():
            return folder
    return None


def _modelscope_cached(ref: ModelRef, looked: list[str]) -> Path | None:
    if not ref.modelscope_id:
        return None
    root = settings.modelscope_cache()
    looked.append(f"ModelScope cache {root}")
    org, name = ref.modelscope_id.split("/", 1)
    # ModelScope stores dots in names as "___" (stable-diffusion-xl-base-1___0); older versions kept them.
    for base in (root / "models", root / "hub" / "models", root, root / "hub"):
        for folder_name in (name.replace(".", "___"), name):
            if (base / org / folder_name).is_dir():
                return base / org / folder_name
    return None


def _patterns(ref: ModelRef, filename: str | None, variant: str | None, allow_pickle: bool) -> list[str]:
    """The files worth downloading: configs, tokenizers and the weights of the wanted precision only.

    Pipeline repos also hold single-file checkpoints at their root (7 GB for SDXL) that we never use,
    so weights are only taken from component sub-folders.
    """
    within = f"{ref.subfolder}/" if ref.subfolder else ""
    if ref.kind is RepoKind.FILES:
        return [within + (filename or "*.safetensors")]
    suffixes = [".safetensors"] + ([".bin"] if allow_pickle else [])
    stem = f"*.{variant}" if variant else "*"
    prefix = "*/" if ref.kind is RepoKind.PIPELINE else ""
    return [within + pattern for pattern in _METADATA_PATTERNS] + [
        f"{within}{prefix}{stem}{suffix}" for suffix in suffixes]


def _fetch_missing_defaults(ref: ModelRef, folder: Path, variant: str | None, allow_pickle: bool) -> None:
    """A repo without fp16 files for some component falls back to that component's default files."""
    if not variant or ref.kind is RepoKind.FILES:
        return
    model = _inside(folder, ref)
    components = [p for p in model.iterdir() if p.is_dir()] if ref.kind is RepoKind.PIPELINE else [model]
    for component in components:
        if (component / "config.json").is_file() and not any(component.glob(f"*.{variant}.*")):
            prefix = f"{component.relative_to(folder).as_posix()}/" if component != folder else ""
            patterns = [f"{prefix}*.safetensors"] + ([f"{prefix}*.bin"] if allow_pickle else [])
            _hf_fetch(ref, patterns, [])


def _hf_fetch(ref: ModelRef, patterns: list[str], looked: list[str], ignore: list[str] | None = None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.hf_id, cache_dir=settings.hf_hub_cache(), allow_patterns=patterns,
                                      ignore_patterns=ignore, etag_timeout=settings.HUB_TIMEOUT_S,
                                      endpoint=settings.hf_endpoint()))
    except Exception as error:  # noqa: BLE001 - any hub failure means "not there"; we say why below
        looked.append(f"the Hugging Face hub: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        return None


def _modelscope_fetch(ref: ModelRef, patterns: list[str], looked: list[str], ignore: list[str] | None = None
                      ) -> Path | None:
    """ModelScope's client: `ignore` is not passed on, since its name for it differs between versions."""
    if not ref.modelscope_id:
        return None
    if importlib.util.find_spec("modelscope") is None:
        looked.append("ModelScope hub: not asked, install imagegen[modelscope] to use it")
        return None
    from modelscope import snapshot_download

    try:
        return Path(snapshot_download(ref.modelscope_id, cache_dir=str(settings.modelscope_cache()),
                                      allow_patterns=patterns))
    except Exception as error:  # noqa: BLE001 - as for the Hugging Face hub
        looked.append(f"ModelScope hub: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        return None
