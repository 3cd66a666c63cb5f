"""`imagegen pull` and the ready check: exactly the files a recipe loads, fetched from a hub and found on disk.

The hub is a local stand-in of the Hugging Face hub's HTTP API on 127.0.0.1 serving the tiny repos of the session
cache (huggingface_hub talks to it through HF_ENDPOINT), so the real huggingface_hub download code runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from tiny_models import SDXL_BASE, SDXL_LIGHTNING, SDXL_TURBO, snapshot_path

from imagegen.engine import Engine, EngineOptions
from imagegen.models.pull import NeededModel, is_ready, needed_models
from imagegen.models.sources import ModelRef, RepoKind, download_plan
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest

SMALL = {"prompt": "a lighthouse", "seed": 3, "width": 64, "height": 64}


@dataclass
class FakeHub:
    """The repos of a built cache behind the endpoints snapshot_download and hf_hub_download call."""

    cache: Path
    url: str = ""
    requests: list[str] = field(default_factory=list)  # "METHOD path", in arrival order

    def repo(self, repo_id: str) -> tuple[str, Path, dict[str, dict]] | None:
        """(commit, snapshot folder, listing as the hub's tree endpoint reports it) of a built repo."""
        folder = self.cache / f"models--{repo_id.replace('/', '--')}"
        if not (folder / "refs" / "main").is_file():
            return None
        commit = (folder / "refs" / "main").read_text()
        listing = json.loads((folder / "trees" / f"{commit}.json").read_text())["files"]
        return commit, folder / "snapshots" / commit, listing


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args: object) -> None:  # quiet: the test output is pytest's
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        self.hub.requests.append(f"{self.command} {self.path}")
        path = unquote(urlsplit(self.path).path)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/[^/]+)?(?:/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        found = self.hub.repo((api or resolve).group(1)) if api or resolve else None
        if found is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        commit, snapshot, listing = found
        if api and api.group(2) != "tree":  # model_info, at a revision or the default branch
            siblings = [{"rfilename": name, "size": entry["size"], "blobId": entry["blob_id"],
                         **({"lfs": {"sha256": entry["lfs_sha256"], "size": entry["lfs_size"], "pointerSize": 134}}
                            if "lfs_sha256" in entry else {})} for name, entry in listing.items()]
            return self._send(200, json.dumps({"id": api.group(1), "sha": commit, "siblings": siblings}).encode(),
                              {"Content-Type": "application/json"}, body)
        if api:
            tree = [{"type": "file", "path": name, "size": entry["size"], "oid": entry["blob_id"],
                     **({"lfs": {"oid": entry["lfs_sha256"], "size": entry["lfs_size"], "pointerSize": 134}}
                        if "lfs_sha256" in entry else {})} for name, entry in listing.items()]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        name = resolve.group(3)
        if name not in listing:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, body)
        data = (snapshot / name).read_bytes()
        etag = listing[name].get("lfs_sha256") or listing[name]["blob_id"]
        start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if start else 200, data[start:], headers, body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def hub(hf_cache: Path) -> Iterator[FakeHub]:
    fake = FakeHub(hf_cache)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_HubHandler,), {"hub": fake}))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def imagegen(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagegen.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def online(hub: FakeHub, cache: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0",
            "MODELSCOPE_CACHE": str(cache.parent / "modelscope"), "OMP_NUM_THREADS": "1"}


def planned(cache: Path, needed: NeededModel) -> list[str]:
    """What pull fetches for `needed`: download_plan over the repo's listing, as the hub reports it."""
    snapshot = snapshot_path(cache, needed.ref.hf_id)
    listing = json.loads((snapshot.parent.parent / "trees" / f"{snapshot.name}.json").read_text())["files"]
    index = snapshot / "model_index.json"
    return download_plan(needed.ref, listing, filename=needed.filename, variant=needed.variant,
                         model_index=json.loads(index.read_text()) if index.is_file() else None)


def copy_planned(source: Path, target: Path, needed: list[NeededModel]) -> None:
    """A fresh cache holding only the planned files, laid out as huggingface_hub leaves a download."""
    for model in needed:
        snapshot = snapshot_path(source, model.ref.hf_id)
        repo = target / snapshot.parent.parent.name
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "trees").mkdir(exist_ok=True)
        shutil.copy(snapshot.parent.parent / "refs" / "main", repo / "refs" / "main")
        shutil.copy(snapshot.parent.parent / "trees" / f"{snapshot.name}.json", repo / "trees")
        for name in planned(source, model):
            (repo / "snapshots" / snapshot.name / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(snapshot / name, repo / "snapshots" / snapshot.name / name)


def weights(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))


@pytest.mark.parametrize(("recipe_name", "dtype", "options"), [
    ("sdxl-turbo", "float32", {}),
    ("sdxl-turbo", "float16", {}),
    ("sdxl-lightning", "float32", {"num_inference_steps": 2}),
])
def test_the_planned_files_alone_generate_offline(hf_cache, tmp_path, monkeypatch, recipe_name, dtype,
                                                  options) -> None:
    recipe = get_recipe(recipe_name)
    engine = Engine(EngineOptions(device="cpu", dtype=dtype))
    precision = functools.partial(engine.precision, recipe)
    needed = needed_models(recipe, precision, options.get("num_inference_steps", recipe.defaults.num_inference_steps))
    fresh = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(fresh))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    assert not is_ready(recipe, precision)
    copy_planned(hf_cache, fresh, needed)
    assert is_ready(recipe, precision) == (options == {})  # a step count's file is ready at that count only
    for model in needed:
        files = weights(snapshot_path(fresh, model.ref.hf_id))
        if model.ref.kind is RepoKind.FILES:
            assert files == [model.filename] == ["sdxl_lightning_2step_unet.safetensors"]
        else:  # one precision per component, nothing else
            assert files and all((".fp16." in name) == (dtype == "float16") for name in files)
            assert len(files) == len({name.split("/")[0] for name in files})
    images = engine.generate(GenerationRequest(**SMALL, recipe=recipe_name, **options))
    assert images[0].image.size == (64, 64)


def test_a_cache_with_full_precision_files_only_is_not_ready_for_a_gpu(hf_cache, tmp_path, monkeypatch) -> None:
    recipe = get_recipe("sdxl-turbo")
    cpu = functools.partial(Engine(EngineOptions(device="cpu")).precision, recipe)
    half = functools.partial(Engine(EngineOptions(device="cpu", dtype="float16")).precision, recipe)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    copy_planned(hf_cache, tmp_path, needed_models(recipe, cpu, 1))
    assert is_ready(recipe, cpu) and not is_ready(recipe, half)


def test_stable_cascade_plans_its_bf16_files_for_half_precision(hf_cache) -> None:
    recipe = get_recipe("stable-cascade")
    for dtype, wanted in (("float16", True), ("float32", False)):
        precision = functools.partial(Engine(EngineOptions(device="cpu", dtype=dtype)).precision, recipe)
        for model in needed_models(recipe, precision, 20):
            files = [name for name in planned(hf_cache, model) if name.endswith(".safetensors")]
            assert files and all((".bf16." in name) == wanted for name in files), (dtype, files)


def test_the_plan_skips_what_no_pipeline_loads() -> None:
    """Root checkpoints and folders model_index.json does not name are never fetched; sharded variants are
    recognised; a component without the wanted variant falls back to its default files."""
    listing = ["model_index.json", "sd_xl_base_1.0.safetensors", "README.md", "scheduler/scheduler_config.json",
               "unet/config.json", "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.bin",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae_1_0/config.json",
               "vae_1_0/diffusion_pytorch_model.fp16.safetensors", "unet/model.onnx"]
    index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "safety_checker": [None, None]}
    plan = download_plan(ModelRef(SDXL_BASE), listing, variant="fp16", model_index=index)
    assert plan == ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                    "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                    "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
                    "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "vae/config.json",
                    "vae/diffusion_pytorch_model.safetensors"]
    full = download_plan(ModelRef(SDXL_BASE), listing, model_index=index)
    assert [name for name in full if name.endswith(".safetensors")] == [
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    lightning = ModelRef(SDXL_LIGHTNING, kind=RepoKind.FILES, file_pattern="sdxl_lightning_{steps}step_unet.safetensors")
    assert download_plan(lightning, ["sdxl_lightning_4step_unet.safetensors", "sdxl_lightning_8step_unet.safetensors",
                                     "sdxl_lightning_4step_lora.safetensors"], filename=lightning.file_for(4)) == [
        "sdxl_lightning_4step_unet.safetensors"]


def test_pull_downloads_the_plan_once_and_says_where(hf_cache, hub, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = imagegen("pull", "sdxl-turbo", "--device", "cpu", env=online(hub, cache))
    assert first.returncode == 0, first.stderr
    snapshot = snapshot_path(cache, SDXL_TURBO)
    arrived = sorted(path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file())
    published = snapshot_path(hf_cache, SDXL_TURBO)
    expected = sorted(path.relative_to(published).as_posix() for path in published.rglob("*")
                      if path.is_file() and ".fp16." not in path.name)  # everything but the half-precision weights
    assert arrived == expected
    size = sum((snapshot / name).stat().st_size for name in expected)
    summary, total = first.stdout.splitlines()
    assert summary.startswith(f"{SDXL_TURBO}: {len(expected)} files, ") and summary.endswith(f" in {snapshot}")
    number, unit = re.fullmatch(r"total: ([\d.]+) (B|kB|MB|GB)", total).groups()
    assert float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit] == pytest.approx(size, rel=0.05)
    assert any("/resolve/" in request for request in hub.requests)

    hub.requests.clear()
    again = imagegen("pull", "sdxl-turbo", "--device", "cpu", env=online(hub, cache))
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    assert not [request for request in hub.requests if "/resolve/" in request]  # nothing downloaded twice


def test_pull_for_a_gpu_takes_the_fp16_files_and_one_lightning_file(hf_cache, hub, tmp_path) -> None:
    cache = tmp_path / "cache"
    result = imagegen("pull", "sdxl-lightning", "--dtype", "float16", "--steps", "8", env=online(hub, cache))
    assert result.returncode == 0, result.stderr
    assert weights(snapshot_path(cache, SDXL_LIGHTNING)) == ["sdxl_lightning_8step_unet.safetensors"]
    base = weights(snapshot_path(cache, SDXL_BASE))
    assert base and all(".fp16." in name for name in base)
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [SDXL_BASE, SDXL_LIGHTNING, "total"]


@pytest.mark.parametrize(("args", "env", "code", "message"), [
    (["no-such-recipe"], {}, 2, "unknown recipe 'no-such-recipe'"),
    (["sdxl-turbo"], {"HF_HUB_OFFLINE": "1"}, 3, "HF_HUB_OFFLINE is set"),
    (["sdxl-turbo"], {"HF_ENDPOINT": "http://127.0.0.1:9"}, 3,
     "cannot pull stabilityai/sdxl-turbo from the Hugging Face hub: ConnectError"),
    (["sdxl-lightning", "--steps", "3"], {}, 2, "has files for 1, 2, 4, 8 steps only, got 3"),
])
def test_pull_failures_are_one_line(hub, tmp_path, args, env, code, message) -> None:
    result = imagegen("pull", *args, env={**online(hub, tmp_path / "cache"), **env})
    assert result.returncode == code
    assert result.stderr.startswith("imagegen: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_pull_of_the_built_in_recipe_has_nothing_to_do(hub, tmp_path) -> None:
    hub.requests.clear()
    result = imagegen("pull", "digits", env=online(hub, tmp_path / "cache"))
    assert result.returncode == 0 and result.stdout == "recipe digits ships with imagegen: nothing to pull\n"
    assert hub.requests == []


def test_pull_with_fast_also_fetches_the_tiny_vae(hf_cache, taesd_models, hub, tmp_path) -> None:
    from tiny_taesd import TAESDXL

    cache = tmp_path / "cache"
    result = imagegen("pull", "sdxl-turbo", "--device", "cpu", "--fast", env=online(hub, cache))
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [SDXL_TURBO, TAESDXL, "total"]
    assert weights(snapshot_path(cache, TAESDXL)) == ["diffusion_pytorch_model.safetensors"]
