"""Tiny random-weight copies of the SDXL-family repos, laid out as the Hugging Face hub cache holds them.

Tests and benchmarks point ``HF_HUB_CACHE`` at the folder that `build_hf_cache` writes, so the code under test
resolves ``stabilityai/sdxl-turbo`` and friends through huggingface_hub exactly as on a user's machine, only with
models small enough to build in about a second and to sample a 64x64 image in tens of milliseconds per step on
a CPU.

Every file sits where the real repo has it (diffusers folders plus ``*.fp16.safetensors`` variants for the
pipelines, a root-level UNet for LCM-SDXL, fp16 UNet state dicts for SDXL-Lightning).  Weights are random but
seeded per component, so two builds with the same ``scale`` are byte-identical and so are their commit hashes.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_TURBO = "stabilityai/sdxl-turbo"
LCM_SDXL = "latent-consistency/lcm-sdxl"
SDXL_LIGHTNING = "ByteDance/SDXL-Lightning"
DIT_256 = "facebook/DiT-XL-2-256"
# A few real ImageNet names at their real ids; the other classes get placeholder names.
DIT_NAMED_CLASSES = {207: "golden retriever", 360: "otter", 88: "macaw"}

LIGHTNING_STEPS = (1, 2, 4, 8)

# Base of the per-component seeds: each repo differs, so e.g. Turbo's UNet is not the base UNet.
_REPO_SEEDS = {SDXL_BASE: 0, SDXL_TURBO: 100, LCM_SDXL: 200, SDXL_LIGHTNING: 300, DIT_256: 400}

# Scheduler configs as in the real repos' scheduler/scheduler_config.json (SDXL base 1.0 and SDXL-Turbo).
_SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# SDXL-Turbo model card: 1-4 steps need "trailing" spacing so that the first step starts at t=999.
_TURBO_SCHEDULER = {**_SDXL_SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}

# ModelScope's ".mv" revision timestamp, fixed so that copies are reproducible (2024-01-01T00:00:00Z).
_MODELSCOPE_CREATED_AT = 1704067200

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
# A few merges so that common prompt words become single tokens, as with the real CLIP vocabulary.
_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
)


@dataclass(frozen=True)
class _Tokenizer:
    """The tokenizer folder's contents; ``pad_token`` differs between SDXL's two tokenizers."""

    vocab: dict[str, int]
    pad_token: str

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]


def build_hf_cache(cache_dir: Path, *, scale: int = 1) -> None:
    """Write the four repos into ``cache_dir`` in huggingface_hub's cache layout, replacing earlier builds.

    ``scale`` multiplies every width (channels, hidden sizes) and the text encoders' depth, so a benchmark can
    build models big enough for load times to matter; 1 is the size of diffusers' own tiny SDXL test models.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _build_repo(cache_dir, SDXL_BASE, lambda folder: _write_sdxl_pipeline(folder, SDXL_BASE, scale, _SDXL_SCHEDULER))
    _build_repo(cache_dir, SDXL_TURBO, lambda folder: _write_sdxl_pipeline(folder, SDXL_TURBO, scale, _TURBO_SCHEDULER))
    _build_repo(cache_dir, LCM_SDXL, lambda folder: _write_lcm_unet(folder, scale))
    _build_repo(cache_dir, SDXL_LIGHTNING, lambda folder: _write_lightning_unets(folder, scale))
    _build_repo(cache_dir, DIT_256, _write_dit_pipeline)


def snapshot_path(cache_dir: Path, repo_id: str) -> Path:
    """The snapshot folder that ``refs/main`` of a built repo points at."""
    repo_folder = cache_dir / _repo_folder_name(repo_id)
    commit = (repo_folder / "refs" / "main").read_text()
    return repo_folder / "snapshots" / commit


def write_modelscope_copy(hf_cache_dir: Path, modelscope_cache_dir: Path, hf_repo: str, modelscope_id: str) -> Path:
    """Copy a built repo into ModelScope's cache layout and return the model folder.

    ModelScope keeps a model in ``<cache>/models/<org>/<name>`` with every "." of the id written as "___"
    (``stable-diffusion-xl-base-1.0`` lands in ``stable-diffusion-xl-base-1___0``), beside its own bookkeeping
    files: ``.mdl`` (pickled model id), ``.msc`` (pickled list of cached files) and ``.mv`` (revision).
    """
    source = snapshot_path(hf_cache_dir, hf_repo)
    target = modelscope_cache_dir / "models" / modelscope_id.replace(".", "___")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    files = sorted(path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file())
    (target / ".mdl").write_bytes(pickle.dumps({"id": modelscope_id}))
    (target / ".msc").write_bytes(pickle.dumps([{"Path": name, "Revision": source.name} for name in files]))
    (target / ".mv").write_text(f"Revision:master,CreatedAt:{_MODELSCOPE_CREATED_AT}")
    return target


def _repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _build_repo(cache_dir: Path, repo_id: str, write_files: Callable[[Path], None]) -> None:
    """Write a repo's files with ``write_files(folder)`` and file them under a commit hash of their content.

    The hash covers every file, so it changes with ``scale`` and a cache rebuilt at another scale never
    shares a snapshot path (or huggingface_hub's in-memory tree listing) with the previous one.
    """
    repo_folder = cache_dir / _repo_folder_name(repo_id)
    if repo_folder.exists():
        shutil.rmtree(repo_folder)
    staging = repo_folder / "snapshots" / "staging"
    staging.mkdir(parents=True)
    write_files(staging)
    listing = _tree_listing(staging)
    commit = hashlib.sha1(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    staging.rename(repo_folder / "snapshots" / commit)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(commit)
    # huggingface_hub >= 2 records each downloaded commit's file listing here; diffusers reads it offline to
    # choose the files a pipeline needs, so a cache without it would take a different code path.
    trees = repo_folder / "trees"
    trees.mkdir()
    (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}, indent=2))


def _tree_listing(snapshot: Path) -> dict[str, dict[str, Any]]:
    """Per-file size and git blob id as the hub's tree endpoint reports them (safetensors are LFS files)."""
    listing: dict[str, dict[str, Any]] = {}
    for path in sorted(snapshot.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        entry: dict[str, Any] = {"size": len(data)}
        if path.suffix == ".safetensors":
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
            entry.update(blob_id=_git_blob_id(pointer), lfs_sha256=sha256, lfs_size=len(data))
        else:
            entry["blob_id"] = _git_blob_id(data)
        listing[path.relative_to(snapshot).as_posix()] = entry
    return listing


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_sdxl_pipeline(folder: Path, repo_id: str, scale: int, scheduler_config: dict[str, Any]) -> None:
    """A StableDiffusionXLPipeline folder with fp32 weights and, beside them, the ``fp16`` variant."""
    import diffusers
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    seed = _REPO_SEEDS[repo_id]
    # The real tokenizer pads with <|endoftext|>, tokenizer_2 with "!" (OpenCLIP's pad id 0).
    tokenizers = (_clip_tokenizer(pad_token=_EOS), _clip_tokenizer(pad_token="!"))
    for name, tokenizer in zip(("tokenizer", "tokenizer_2"), tokenizers):
        _write_tokenizer(folder / name, tokenizer)
    torch.manual_seed(seed + 2)
    # SDXL's first encoder is OpenAI CLIP ViT-L (quick_gelu), the second OpenCLIP ViT-bigG (gelu).
    text_encoder = CLIPTextModel(_text_config(scale, tokenizers[0], hidden_act="quick_gelu"))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(
        scale, tokenizers[1], hidden_act="gelu", hidden_size=_hidden_size_2(scale), num_hidden_layers=10 * scale))
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scale, seed + 1),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=_unet(scale, seed),
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Saved last on purpose: transformers then records "float16" as the text encoders' dtype in config.json,
    # as the real repos do, so loaders that do not pass torch_dtype get fp16 encoders there as here.
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    # save_pretrained rewrote these with a tokenizer.json and every current default; put back the files the
    # real repos have, so loading goes through the same conversions as on a user's machine.
    for name, tokenizer in zip(("tokenizer", "tokenizer_2"), tokenizers):
        shutil.rmtree(folder / name)
        _write_tokenizer(folder / name, tokenizer)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))


def _write_lcm_unet(folder: Path, scale: int) -> None:
    """LCM-SDXL ships only a distilled UNet, in diffusers format at the repo root.

    Its config is the base UNet's: unlike the SD 1.5 LCMs it has no ``time_cond_proj_dim`` (diffusers' SDXL
    distillation script never embeds the guidance scale), so the pipeline still runs classifier-free guidance.
    """
    import torch

    unet = _unet(scale, _REPO_SEEDS[LCM_SDXL])
    unet.save_pretrained(folder, safe_serialization=True)
    unet.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")


def _write_lightning_unets(folder: Path, scale: int) -> None:
    """SDXL-Lightning ships bare fp16 UNet state dicts, one per step count, for the base's UNet config."""
    import torch
    from safetensors.torch import save_file

    for steps in LIGHTNING_STEPS:
        unet = _unet(scale, _REPO_SEEDS[SDXL_LIGHTNING] + steps)
        state_dict = {key: tensor.to(torch.float16).contiguous() for key, tensor in unet.state_dict().items()}
        save_file(state_dict, folder / f"sdxl_lightning_{steps}step_unet.safetensors")


def _write_dit_pipeline(folder: Path) -> None:
    """facebook/DiT-XL-2-256's layout: the transformer still named by its legacy class, Transformer2DModel,
    id2label in model_index.json, a DDIM scheduler; sizes from diffusers' DiT pipeline test."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, Transformer2DModel

    torch.manual_seed(_REPO_SEEDS[DIT_256])
    transformer = Transformer2DModel(
        sample_size=32, num_layers=2, patch_size=4, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8,  # learned sigma: noise and variance, as DiT-XL/2
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    torch.manual_seed(_REPO_SEEDS[DIT_256] + 1)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    id2label = {str(i): DIT_NAMED_CLASSES.get(i, f"class{i}") for i in range(1000)}
    DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = id2label
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))


def _unet(scale: int, seed: int) -> UNet2DConditionModel:
    """diffusers' tiny SDXL test UNet (get_dummy_components in test_stable_diffusion_xl.py), widths scaled."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32 * scale, 64 * scale),
        layers_per_block=2,
        sample_size=32,  # latent size; with the VAE's 2x downsampling the default image is 64x64
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 micro-conditioning numbers (size, crop, target size) * addition_time_embed_dim + pooled text_encoder_2
        projection_class_embeddings_input_dim=6 * 8 + _projection_dim(scale),
        # the pipeline concatenates both encoders' hidden states
        cross_attention_dim=_hidden_size(scale) + _hidden_size_2(scale),
    )


def _vae(scale: int, seed: int) -> AutoencoderKL:
    """diffusers' tiny SDXL test VAE with SDXL's latent scaling factor."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32 * scale, 64 * scale],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
        scaling_factor=0.13025,  # stable-diffusion-xl-base-1.0/vae/config.json
    )


def _hidden_size(scale: int) -> int:
    return 32 * scale


def _hidden_size_2(scale: int) -> int:
    """The second encoder is wider than the first, as OpenCLIP bigG (1280) is wider than CLIP-L (768):
    diffusers' single-file loader tells the two apart by that width."""
    return 48 * scale


def _projection_dim(scale: int) -> int:
    return 32 * scale


def _text_config(scale: int, tokenizer: _Tokenizer, *, hidden_act: str, hidden_size: int | None = None,
                 num_hidden_layers: int | None = None) -> CLIPTextConfig:
    """The tiny test text encoder, with token ids taken from its tokenizer so bos/eos/pad agree."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer.vocab),
        bos_token_id=tokenizer.vocab[_BOS],
        # CLIPTextModel pools at the first eos_token_id, so it must be the tokenizer's <|endoftext|>.
        eos_token_id=tokenizer.vocab[_EOS],
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size or _hidden_size(scale),
        intermediate_size=37 * scale,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers or 5 * scale,
        max_position_embeddings=77,
        layer_norm_eps=1e-05,
        hidden_act=hidden_act,
        projection_dim=_projection_dim(scale),
    )


def _clip_tokenizer(*, pad_token: str) -> _Tokenizer:
    """A CLIP byte-level BPE vocabulary built the way CLIP's own is (bytes, bytes + "</w>", merges, specials)."""
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [char + "</w>" for char in byte_chars] + ["".join(merge) for merge in _MERGES] + [_BOS, _EOS]
    return _Tokenizer(vocab={token: index for index, token in enumerate(tokens)}, pad_token=pad_token)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte, in vocabulary order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def _write_tokenizer(folder: Path, tokenizer: _Tokenizer) -> None:
    """The four files of the real repos' tokenizer folders (no tokenizer.json there either)."""
    folder.mkdir(parents=True)
    special_tokens = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": tokenizer.pad_token}
    config = {
        **special_tokens,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False, indent=2), encoding="utf-8")
    merges = "".join(f"{left} {right}\n" for left, right in _MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2))
