"""Find a model's files: an explicit local path, the Hugging Face cache or hub, or ModelScope.

Order: a local path given by the user; the Hugging Face cache; the ModelScope cache; then, unless
HF_HUB_OFFLINE is set, the Hugging Face hub and ModelScope (when its extra is installed). A model
found nowhere raises ModelNotFound naming the model, every place looked at and how to get it.
Weights are safetensors only unless the caller explicitly allows pickle files. What a download fetches
is `download_plan`'s choice from the repo's listing, which `imagegen pull` and its ready check share.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar

from imagegen import settings
from imagegen.errors import ModelNotFound, UnsafeWeights

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
_METADATA_PATTERNS = ["*.json", "*.txt", "tokenizer*/*"]
HUBS = {"hf": "the Hugging Face hub", "modelscope": "ModelScope hub"}  # where models download from, as messages say
_T = TypeVar("_T")


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
    # The same id is tried on both hubs: many models (the reference tutorial's majicmixRealistic_v6) exist on
    # ModelScope only.
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
        for source in HUBS if ref.modelscope_id else ["hf"]:
            try:
                return download(plan_download(ref, source, filename=filename, variant=variant,
                                              allow_pickle=allow_pickle))
            except ModelNotFound as error:
                looked.append(str(error))
    how = f"`hf download {ref.hf_id}`"
    if ref.modelscope_id:
        how += f" or `modelscope download --model {ref.modelscope_id}`"
    raise ModelNotFound(
        f"model {ref.hf_id}{' file ' + filename if filename else ''} is not available. "
        f"Looked in: {'; '.join(looked)}. Get it with {how} on a machine with network access "
        "(then copy the cache), or pass --model with a local path"
    )


@dataclass(frozen=True)
class DownloadPlan:
    """The files of one model to fetch from one hub (`source`, a key of HUBS), by repo path, with their sizes."""

    ref: ModelRef
    source: str
    files: dict[str, int]

    @property
    def size(self) -> int:
        """Bytes, as the hub reports them."""
        return sum(self.files.values())


def download_plan(ref: ModelRef, files: Iterable[str], *, filename: str | None = None, variant: str | None = None,
                  allow_pickle: bool = False, model_index: Mapping[str, Any] | None = None) -> list[str]:
    """The files of `ref` that imagegen loads, chosen from its repo's listing `files`: configs, tokenizers, and the
    weights of one precision in each model folder, as ComponentStore will load them.

    `locate` (what generation downloads), `imagegen pull` and the ready check of `imagegen recipes` all choose with
    this one function, so that what is fetched and what counts as complete never differ. Pipeline repos also hold
    single-file checkpoints at their root (7 GB for SDXL) and folders no pipeline loads (Stable Cascade's *_lite):
    files are taken from the component folders that its `model_index` (the parsed model_index.json) names, from every
    folder when it is not known.
    """
    within = f"{ref.subfolder}/" if ref.subfolder else ""
    names = sorted(name[len(within):] for name in files if name.startswith(within))
    # [library, class] entries; [null, null] ones (no safety checker) are not loaded
    components = None if model_index is None else {
        name for name, value in model_index.items() if isinstance(value, list) and value and value[0] is not None}
    if ref.kind is RepoKind.FILES:
        return [within + name for name in names
                if (name == filename if filename else "/" not in name and name.endswith(".safetensors"))]
    folders: dict[str, list[str]] = {}
    for name in names:
        top = name.split("/")[0] if "/" in name else ""
        if ref.kind is RepoKind.PIPELINE and top and components is not None and top not in components:
            continue
        folders.setdefault(name.rpartition("/")[0], []).append(name)
    chosen: list[str] = []
    for folder, in_folder in folders.items():
        chosen += [name for name in in_folder if any(fnmatch(name, pattern) for pattern in _METADATA_PATTERNS)]
        holds_weights = bool(folder) and "/" not in folder if ref.kind is RepoKind.PIPELINE else not folder
        if holds_weights:
            chosen += _one_precision(in_folder, variant, allow_pickle)
    return [within + name for name in sorted(set(chosen))]


def _one_precision(names: list[str], variant: str | None, allow_pickle: bool) -> list[str]:
    """A folder's weights in one precision: the wanted variant, else the default files, else any variant (which
    ComponentStore loads and casts); safetensors, unless only pickle files exist and they are allowed."""
    suffixes = (".safetensors", ".bin") if allow_pickle else (".safetensors",)
    by_variant: dict[str | None, list[str]] = {}
    for name in names:
        if name.endswith(suffixes):
            by_variant.setdefault(_variant_of(name), []).append(name)
    for wanted in (variant, None, *sorted(v for v in by_variant if v)):
        group = by_variant.get(wanted, [])
        if group:
            return [name for name in group if name.endswith(".safetensors")] or group
    return []


def _variant_of(name: str) -> str | None:
    """"model.fp16.safetensors" and its shards "model.fp16-00001-of-00002.safetensors" are fp16; "model.safetensors"
    and "model-00001-of-00002.safetensors" no variant (diffusers' and transformers' naming)."""
    parts = name.rsplit("/", 1)[-1].split(".")
    return parts[-2].split("-")[0] if len(parts) > 2 else None


def plan_download(ref: ModelRef, source: str, *, filename: str | None = None, variant: str | None = None,
                  allow_pickle: bool = False) -> DownloadPlan:
    """Ask hub `source` for the repo's listing and choose from it with download_plan.

    A pipeline's model_index.json, which names its components, is fetched into the cache first (it belongs to every
    plan). Raises ModelNotFound saying which hub failed and why, or what the repo lacks.
    """
    if source == "modelscope" and not ref.modelscope_id:
        raise ModelNotFound(f"{HUBS[source]}: {ref.name} has no ModelScope copy that imagegen knows of; "
                            "use the Hugging Face hub")
    if source == "modelscope" and importlib.util.find_spec("modelscope") is None:
        raise ModelNotFound(f"{HUBS[source]}: not asked, install imagegen[modelscope] to use it")
    listing = _ask(source, lambda: _LISTINGS[source](ref))
    within = f"{ref.subfolder}/" if ref.subfolder else ""
    model_index = None
    if ref.kind is RepoKind.PIPELINE and f"{within}model_index.json" in listing:
        folder = _ask(source, lambda: _DOWNLOADS[source](ref, [f"{within}model_index.json"]))
        model_index = _read_model_index(_inside(folder, ref))
    files = download_plan(ref, listing, filename=filename, variant=variant, allow_pickle=allow_pickle,
                          model_index=model_index)
    marker = _marker(ref, filename)
    if not files or (marker is not None and within + marker not in files):
        raise ModelNotFound(f"{HUBS[source]}: {ref.name} has no {marker or '.safetensors file'}")
    return DownloadPlan(ref, source, {name: listing[name] for name in files})


def download(plan: DownloadPlan) -> Path:
    """Fetch the plan's files into its hub's cache and return the model's folder.

    huggingface_hub shows progress bars on stderr, keeps the files already there and resumes an interrupted one.
    """
    folder = _ask(plan.source, lambda: _DOWNLOADS[plan.source](plan.ref, list(plan.files)))
    missing = [name for name in plan.files if not (folder / name).is_file()]
    if missing:
        raise ModelNotFound(f"{HUBS[plan.source]}: the download of {plan.ref.name} stopped before {missing[0]}; "
                            "run it again to resume")
    return _inside(folder, plan.ref)


def fully_cached(ref: ModelRef, *, filename: str | None = None, variant: str | None = None,
                 allow_pickle: bool = False) -> bool:
    """Whether a cache holds every file that download_plan chooses: nothing would be downloaded. Never touches the
    network.

    The plan is made from the repo's listing as huggingface_hub recorded it at download time (trees/<commit>.json),
    so that a cache holding the fp32 files only is not complete for a GPU, which wants the fp16 ones; caches without
    that record (ModelScope's, older huggingface_hub's) are judged by the files they hold.
    """
    marker = _marker(ref, filename)
    within = f"{ref.subfolder}/" if ref.subfolder else ""
    for folder, listing in _cached_listings(ref):
        files = download_plan(ref, listing, filename=filename, variant=variant, allow_pickle=allow_pickle,
                              model_index=_read_model_index(_inside(folder, ref)))
        if files and (marker is None or within + marker in files) and all((folder / f).is_file() for f in files):
            return True
    return False


def _cached_listings(ref: ModelRef) -> Iterable[tuple[Path, list[str]]]:
    """Each cached copy of the repo, with the listing of the repo it came from."""
    hf = _hf_cached(ref, [])
    if hf is not None:
        record = hf.parent.parent / "trees" / f"{hf.name}.json"
        try:
            yield hf, list(json.loads(record.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            yield hf, _files_in(hf)
    modelscope = _modelscope_cached(ref, [])
    if modelscope is not None:
        yield modelscope, _files_in(modelscope)


def _files_in(folder: Path) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]


def _read_model_index(folder: Path) -> dict[str, Any] | None:
    """A pipeline's model_index.json; None when there is none that reads as a JSON object (a model repo)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def _marker(ref: ModelRef, filename: str | None) -> str | None:
    """The file whose presence says the model is there (none for a FILES repo asked for any of its files)."""
    if ref.kind is RepoKind.FILES:
        return filename
    return "model_index.json" if ref.kind is RepoKind.PIPELINE else "config.json"


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
    marker = _marker(ref, filename)
    return (model / marker).is_file() if marker else any(model.glob("*.safetensors"))


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


def _ask(source: str, call: Callable[[], _T]) -> _T:
    """Run a hub client call; any failure means "not there", said in one line naming the hub."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - timeouts, HTTP errors, missing repos: the message says which
        reason = (str(error).splitlines() or [""])[0][:160]
        raise ModelNotFound(f"{HUBS[source]}: {type(error).__name__}: {reason}") from None


def _hf_listing(ref: ModelRef) -> dict[str, int]:
    """The repo's files and sizes in one request: unlike the paginated tree listing, model_info never retries, so
    an unreachable hub fails at once."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=settings.hf_endpoint()).model_info(ref.hf_id, files_metadata=True,
                                                             timeout=settings.HUB_TIMEOUT_S)
    return {sibling.rfilename: (sibling.lfs.size if sibling.lfs else sibling.size) or 0
            for sibling in info.siblings or []}


def _hf_download(ref: ModelRef, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref.hf_id, cache_dir=settings.hf_hub_cache(), allow_patterns=files,
                                  etag_timeout=settings.HUB_TIMEOUT_S, endpoint=settings.hf_endpoint()))


def _modelscope_listing(ref: ModelRef) -> dict[str, int]:
    from modelscope.hub.api import HubApi

    return {entry["Path"]: int(entry.get("Size") or 0)
            for entry in HubApi().get_model_files(ref.modelscope_id, recursive=True) if entry.get("Type") != "tree"}


def _modelscope_download(ref: ModelRef, files: list[str]) -> Path:
    from modelscope import snapshot_download

    return Path(snapshot_download(ref.modelscope_id, cache_dir=str(settings.modelscope_cache()), allow_patterns=files))


_LISTINGS: dict[str, Callable[[ModelRef], dict[str, int]]] = {"hf": _hf_listing, "modelscope": _modelscope_listing}
_DOWNLOADS: dict[str, Callable[[ModelRef, list[str]], Path]] = {"hf": _hf_download,
                                                                "modelscope": _modelscope_download}
