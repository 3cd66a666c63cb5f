"""LoRAs: find the file a name means, keep its tensors in memory, apply it to one request only.

A request's LoRAs are loaded into the pipeline as PEFT adapters before the call and removed after it,
whatever happens: removing PEFT layers gives back the original modules, so the next request is exactly
what it would be on a fresh engine. Files are read once; later requests take the tensors from memory.
"""

from __future__ import annotations

import glob
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen import settings
from imagegen.errors import InvalidRequest, ModelNotFound, UnsafeWeights
from imagegen.models.sources import PICKLE_SUFFIXES, ModelRef, RepoKind, locate
from imagegen.prompts.lora_tags import LoraSpec

_SUFFIX = ".safetensors"
_DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' training scripts save
HASH_CHARS = 12  # A1111's "shorthash"


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA ready to apply: what the request said, the file it resolved to, and that file's short hash."""

    spec: LoraSpec
    path: Path
    short_hash: str
    tensors: dict[str, Any]


class LoraLibrary:
    """Resolves LoRA names and caches file contents by (path, size, mtime), so an edited file is re-read.

    The most recently used `max_files` stay in memory (SDXL LoRAs are often 100+ MB each).
    """

    def __init__(self, max_files: int = 16, *, names_only: bool = False) -> None:
        self.max_files = max_files
        self.names_only = names_only  # a server's: names inside the LoRA folder only, never paths or hub ids
        self._cache: OrderedDict[tuple[str, int, int], tuple[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files read from disk: lets tests prove the cache serves repeats

    def load(self, spec: LoraSpec) -> LoadedLora:
        path = find_lora_file(spec.name, names_only=self.names_only)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = (short_hash(path), _read_tensors(path))
                self.reads += 1
                while len(self._cache) > self.max_files:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            digest, tensors = self._cache[key]
        return LoadedLora(spec, path, digest, tensors)


def find_lora_file(name: str, *, names_only: bool = False) -> Path:
    """A path; else NAME (or NAME.safetensors) in the LoRA folder, sub-folders included; else a hub id
    'org/repo' (its only root .safetensors, or diffusers' pytorch_lora_weights.safetensors) or
    'org/repo/file.safetensors'. `names_only`: the LoRA folder only, and nothing that leads out of it
    ("..", absolute paths, symbolic links pointing elsewhere)."""
    if names_only:
        return _inside_lora_folder(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _single_weights_file(path, name)
    if path.is_file():
        return _checked(path)
    folder = settings.lora_dir()
    if folder.is_dir():
        for candidate in (folder / name, folder / (name + _SUFFIX)):
            if candidate.is_file():
                return _checked(candidate)
        # A1111 finds a LoRA by its file name in any sub-folder of models/Lora.
        found = sorted(folder.rglob(glob.escape(Path(name).name) + _SUFFIX))
        if found:
            return _checked(found[0])
    parts = name.split("/")
    if len(parts) >= 2 and all(parts) and not {".", ".."} & set(parts) and not name.startswith(("/", "~")):
        return _hub_file("/".join(parts[:2]), "/".join(parts[2:]) or None)
    raise ModelNotFound(f"LoRA {name!r} not found: not a file, not in the LoRA folder {folder} "
                        "(set IMAGEGEN_LORA_DIR), and not a hub id 'org/repo[/file.safetensors]'")


def _inside_lora_folder(name: str) -> Path:
    folder = settings.lora_dir().resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or name.startswith("~"):
        raise InvalidRequest(f"LoRA {name!r}: give the name of a LoRA in the server's LoRA folder, not a path")
    for candidate in (folder / name, folder / (name + _SUFFIX)):
        if candidate.is_file():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(folder):
                raise InvalidRequest(f"LoRA {name!r} leads out of the server's LoRA folder")
            return _checked(resolved)
    raise ModelNotFound(f"LoRA {name!r} is not in the server's LoRA folder")


def short_hash(path: Path) -> str:
    """A1111's LoRA hash: sha256 of a safetensors file's tensor data, after its header (the "addnet hash"),
    so that editing metadata does not change it; the first 12 hex digits go into infotext."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        file.seek(8 + header_size)
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_CHARS]


@contextmanager
def applied(pipe: Any, loras: Sequence[LoadedLora]) -> Iterator[None]:
    """The pipeline with these LoRAs at their weights for the duration of the block, then without any."""
    if not loras:
        yield
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidRequest(f"{type(pipe).__name__} does not take LoRAs")
    try:
        names = []
        for index, lora in enumerate(loras):
            name = f"imagegen_{index}"
            try:
                with warnings.catch_warnings():
                    # peft warns on every adapter after the first; several named adapters are what we want.
                    warnings.filterwarnings("ignore", "Already found a `peft_config` attribute", UserWarning)
                    # A shallow copy: diffusers' format conversions pop keys from the dict they are given.
                    pipe.load_lora_weights(dict(lora.tensors), adapter_name=name)
            except (ValueError, KeyError, RuntimeError) as error:
                raise ModelNotFound(f"LoRA {lora.spec.name} ({lora.path}) does not fit this model: "
                                    f"{str(error).splitlines()[0][:200]}") from None
            names.append(name)
            # diffusers only logs keys that match no layer; a LoRA of which nothing matched is an error.
            if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
                raise ModelNotFound(f"LoRA {lora.spec.name} ({lora.path}) does not fit this model: none of its "
                                    "weights matches a layer (a LoRA for another base model?)")
        pipe.set_adapters(names, adapter_weights=[lora.spec.weight for lora in loras])
        yield
    finally:
        pipe.unload_lora_weights()


def _hub_file(repo: str, filename: str | None) -> Path:
    ref = ModelRef(repo, repo, RepoKind.FILES, file_pattern=filename)
    folder = locate(ref, filename=filename)
    return _checked(folder / filename) if filename else _single_weights_file(folder, repo)


def _single_weights_file(folder: Path, name: str) -> Path:
    files = sorted(folder.glob(f"*{_SUFFIX}"))
    if (folder / _DIFFUSERS_FILE).is_file():
        return folder / _DIFFUSERS_FILE
    if len(files) == 1:
        return files[0]
    if not files:
        raise ModelNotFound(f"LoRA {name}: {folder} holds no .safetensors file")
    raise InvalidRequest(f"LoRA {name}: {folder} holds several LoRA files ({', '.join(f.name for f in files[:5])}); "
                         f"name one, e.g. {name}/{files[0].name}")


def _checked(path: Path) -> Path:
    if path.suffix in PICKLE_SUFFIXES:
        raise UnsafeWeights(f"LoRA {path} is a pickle file, which can run code when loaded; "
                            "use its .safetensors version")
    if path.suffix != _SUFFIX:
        raise InvalidRequest(f"LoRA {path} is not a .safetensors file")
    return path


def _read_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ModelNotFound(f"LoRA {path} cannot be read: {error}") from None
