"""The tiny Stable Cascade repos load and generate like the real ones, and the reference tutorial's snippet runs on
them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_tutorial_cascade import stable_cascade, wuerstchen_module_alias
from tiny_cascade import (
    CASCADE_DECODER,
    CASCADE_DECODER_MS,
    CASCADE_PRIOR,
    CASCADE_TEST_SIZE,
    build_cascade,
    write_old_key_decoder_copy,
)
from tiny_models import snapshot_path

PROMPT = "a photo of the cat and dog"
# Each repo's weighted components and their weights file stem, fp32 and "bf16" variant alike.
WEIGHTS = {
    CASCADE_PRIOR: {"prior": "diffusion_pytorch_model", "text_encoder": "model", "image_encoder": "model"},
    CASCADE_DECODER: {
        "decoder": "diffusion_pytorch_model",
        "text_encoder": "model",
        "vqgan": "diffusion_pytorch_model",
    },
}


def test_reference_generates_one_seeded_image_per_embedding(cascade_models: Path) -> None:
    """The reference tutorial's 20 prior + 10 decoder steps end to end; a batch with a generator per image (the
    decoder called without num_images_per_prompt, as in the tutorial) gives image i of seed + i, up to float
    rounding."""
    single = stable_cascade(PROMPT, seed=7)
    batch = stable_cascade(PROMPT, seed=6, num_images=2)
    size = (CASCADE_TEST_SIZE, CASCADE_TEST_SIZE)
    assert [image.size for image in single] == [size]
    assert [image.size for image in batch] == [size, size]
    pixels = np.asarray(single[0]).astype(float)
    assert pixels.std() > 0
    assert np.abs(np.asarray(batch[1]).astype(float) - pixels).mean() < 1
    assert np.abs(np.asarray(batch[0]).astype(float) - pixels).mean() > 10


def test_builds_are_identical(cascade_models: Path, tmp_path: Path) -> None:
    """The commit hash covers every file's content, so equal hashes mean byte-identical repos."""
    build_cascade(tmp_path)
    for repo_id in (CASCADE_PRIOR, CASCADE_DECODER):
        assert snapshot_path(tmp_path, repo_id).name == snapshot_path(cascade_models, repo_id).name


@pytest.mark.parametrize(("repo_id", "component"), [(repo, name) for repo in WEIGHTS for name in WEIGHTS[repo]])
def test_bf16_variants_sit_beside_the_full_weights(cascade_models: Path, repo_id: str, component: str) -> None:
    from safetensors import safe_open

    folder = snapshot_path(cascade_models, repo_id) / component
    stem = WEIGHTS[repo_id][component]
    for name, dtype in ((f"{stem}.safetensors", "torch.float32"), (f"{stem}.bf16.safetensors", "torch.bfloat16")):
        with safe_open(folder / name, framework="pt") as weights:
            tensors = [weights.get_tensor(key) for key in weights.keys()]
        # the VQGAN's BatchNorm step counter is an integer in either file
        assert {str(tensor.dtype) for tensor in tensors if tensor.is_floating_point()} == {dtype}


def test_decoder_repo_names_the_vqgan_library_as_published(cascade_models: Path) -> None:
    """The real model_index.json says "wuerstchen", which current diffusers no longer resolves by itself."""
    import torch
    from diffusers import StableCascadeDecoderPipeline

    index = json.loads((snapshot_path(cascade_models, CASCADE_DECODER) / "model_index.json").read_text())
    assert index["vqgan"] == ["wuerstchen", "PaellaVQModel"]
    with pytest.raises(ValueError, match="is not a module in 'diffusers/pipelines'"):
        StableCascadeDecoderPipeline.from_pretrained(CASCADE_DECODER, torch_dtype=torch.float32)


def test_old_key_decoder_copy_fails_in_diffusers_with_the_shape_error(cascade_models: Path, tmp_path: Path) -> None:
    """A decoder config that says c_in instead of in_channels: diffusers builds a 16-channel input layer."""
    import torch
    from diffusers import StableCascadeDecoderPipeline

    folder = write_old_key_decoder_copy(cascade_models, tmp_path)
    assert folder == tmp_path / "models" / CASCADE_DECODER_MS
    config = json.loads((folder / "decoder" / "config.json").read_text())
    assert config["c_in"] == 4 and "in_channels" not in config
    with wuerstchen_module_alias(), pytest.raises(ValueError, match=r"embedding\.1\.weight expected shape"):
        StableCascadeDecoderPipeline.from_pretrained(folder, torch_dtype=torch.float32)
