"""imagegen's plain-torch DiT computes what diffusers' DiTTransformer2DModel computes, from the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagegen.builtin.dit_model import DiT
from imagegen.recipes.dit import builtin_digits_folder


def outputs(folder: Path, batch: int, *, channels: int, side: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers import DiTTransformer2DModel

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=generator)  # (N, C, H, W)
    timesteps = torch.randint(1000, (batch,), generator=generator)
    labels = torch.randint(classes + 1, (batch,), generator=generator)  # the null class included
    with torch.no_grad():
        ours = DiT.from_pretrained(folder)(x, timestep=timesteps, class_labels=labels).sample
        theirs = DiTTransformer2DModel.from_pretrained(folder).eval()(x, timestep=timesteps, class_labels=labels).sample
    return ours, theirs


def test_matches_diffusers_on_the_shipped_weights() -> None:
    ours, theirs = outputs(builtin_digits_folder() / "transformer", 8, channels=1, side=8, classes=10)
    assert ours.shape == theirs.shape == (8, 1, 8, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_matches_diffusers_on_another_geometry(tmp_path: Path) -> None:
    """Latent-DiT-like: 4 channels in, 8 out (learned variance), 16x16 input, no class table row to spare."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, num_layers=2, in_channels=4,
                                  out_channels=8, sample_size=16, patch_size=4, num_embeds_ada_norm=5)
    for parameter in model.parameters():  # adaLN-Zero starts at zero: randomise so every path counts
        torch.nn.init.normal_(parameter, std=0.1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours, theirs = outputs(tmp_path, 3, channels=4, side=16, classes=5)
    assert ours.shape == (3, 8, 16, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_loads_in_the_requested_dtype_and_refuses_other_norms(tmp_path: Path) -> None:
    model = DiT.from_pretrained(builtin_digits_folder() / "transformer", torch_dtype=torch.float64)
    assert model.dtype == torch.float64 and not model.training
    assert model.config.num_embeds_ada_norm == 10
    config = dict(model.config, norm_type="ada_norm")
    with pytest.raises(ValueError, match="ada_norm_zero"):
        DiT(type(model.config)(config))
