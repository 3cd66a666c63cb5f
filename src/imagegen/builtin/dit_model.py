"""The built-in digits model's network in plain torch: diffusers' DiTTransformer2DModel, adaLN-Zero variant.

Importing diffusers costs seconds (it pulls in torch._dynamo among others) where sampling the digits model
takes a tenth of one, so the built-in recipe runs this copy of the forward pass instead. It reads the same
folder (config.json and diffusion_pytorch_model.safetensors, diffusers' parameter names) and follows
diffusers' arithmetic step for step (models/transformers/dit_transformer_2d.py, attention.py's
BasicTransformerBlock with norm_type "ada_norm_zero", normalization.py's AdaLayerNormZero, embeddings.py),
so its outputs equal diffusers' up to float rounding (tests/builtin/test_dit_model.py). It covers the
configurations the digits trainer writes: no dropout at inference, "gelu-approximate", no cross-attention.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from imagegen.builtin.model_config import ModelConfig, merged, read_config

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
TIMESTEP_CHANNELS = 256  # diffusers' CombinedTimestepLabelEmbeddings: the sinusoid's width
# DiTTransformer2DModel's defaults, for entries a config.json leaves out.
DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": None,
    "num_layers": 28,
    "attention_bias": True,
    "sample_size": 32,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
}


class DiTOutput(NamedTuple):
    """As diffusers' Transformer2DModelOutput: pipelines read `.sample`."""

    sample: torch.Tensor  # (N, C_out, H, W)


def sincos_positions(dim: int, grid: int) -> torch.Tensor:
    """DiT's fixed 2D sin-cos position of each patch, row-major: column code, then row code.

    diffusers' get_2d_sincos_pos_embed, including its float64 frequencies."""
    coords = torch.arange(grid, dtype=torch.float32)
    columns, rows = torch.meshgrid(coords, coords, indexing="xy")  # (G, G) each
    return torch.cat([_sincos(dim // 2, columns), _sincos(dim // 2, rows)], dim=1).float()  # (G*G, D)


def _sincos(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    angles = torch.outer(positions.reshape(-1), omega)  # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (M, D)


def timestep_sinusoids(timesteps: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """`get_timestep_embedding` with flip_sin_to_cos=True and downscale_freq_shift=1, as DiT uses it."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - 1))  # (C/2,)
    angles = timesteps[:, None].float() * frequencies[None, :]  # (N, C/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, C)


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to tokens, plus their fixed positions."""

    def __init__(self, *, sample_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        # Not saved (diffusers' buffer is non-persistent): computed from the geometry.
        self.register_buffer("pos_embed", sincos_positions(dim, sample_size // patch_size)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)
        return (tokens + self.pos_embed).to(tokens.dtype)


class TimestepEmbedding(nn.Module):
    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LabelEmbedding(nn.Module):
    """One row per class plus the null class (id == num_classes) that classifier-free guidance uses."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class TimestepLabelEmbedding(nn.Module):
    """The conditioning vector c = MLP(sinusoid(t)) + table[y] (diffusers' CombinedTimestepLabelEmbeddings)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim)
        self.class_embedder = LabelEmbedding(num_classes, dim)

    def forward(self, timesteps: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_sinusoids(timesteps).to(dtype)) + self.class_embedder(labels)  # (N, D)


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero (Peebles & Xie, 2023, section 3.2): shift, scale and gate of both sub-layers from c."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.emb = TimestepLabelEmbedding(num_classes, dim)
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        modulation = self.linear(F.silu(self.emb(timesteps, labels, x.dtype)))  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        return self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None], gate_msa, shift_mlp, scale_mlp, gate_mlp


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, *, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # diffusers' to_out.1 is a dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, _ = x.shape
        q, k, v = (layer(x).view(n, tokens, self.heads, -1).transpose(1, 2)  # (N, heads, T, head_dim)
                   for layer in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, head_dim)
        return self.to_out[0](out.transpose(1, 2).reshape(n, tokens, -1).to(q.dtype))  # (N, T, D)


class GELUProjection(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        # Indices as diffusers' FeedForward.net (0: projection + GELU, 1: dropout, 2: output) so weight names match.
        self.net = nn.ModuleList([GELUProjection(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class DiTBlock(nn.Module):
    """diffusers' BasicTransformerBlock with norm_type "ada_norm_zero": each block embeds (t, y) itself."""

    def __init__(self, dim: int, heads: int, head_dim: int, num_classes: int, *, bias: bool, norm_eps: float,
                 affine: bool) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim, num_classes)
        self.attn1 = SelfAttention(dim, heads, head_dim, bias=bias)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=affine)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, timesteps, labels)
        x = gate_msa.unsqueeze(1) * self.attn1(normed) + x
        normed = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return gate_mlp.unsqueeze(1) * self.ff(normed) + x  # (N, T, D)


class DiT(nn.Module):
    """Class-conditional DiT (Peebles & Xie, 2023) with diffusers' parameter names and config.

    `forward(x, timestep=, class_labels=)` returns `DiTOutput(sample)`, as diffusers' model returns
    Transformer2DModelOutput; `config` and `dtype` read as diffusers' do.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.norm_type != "ada_norm_zero" or config.activation_fn != "gelu-approximate":
            raise ValueError(f"this DiT supports norm_type 'ada_norm_zero' with 'gelu-approximate' only, got "
                             f"{config.norm_type!r} with {config.activation_fn!r}")
        self.config = config
        self.out_channels = config.out_channels or config.in_channels
        dim = config.num_attention_heads * config.attention_head_dim
        self.pos_embed = PatchEmbed(sample_size=config.sample_size, patch_size=config.patch_size,
                                    in_channels=config.in_channels, dim=dim)
        self.transformer_blocks = nn.ModuleList([
            DiTBlock(dim, config.num_attention_heads, config.attention_head_dim, config.num_embeds_ada_norm,
                     bias=config.attention_bias, norm_eps=config.norm_eps, affine=config.norm_elementwise_affine)
            for _ in range(config.num_layers)
        ])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, config.patch_size**2 * self.out_channels)

    @classmethod
    def from_pretrained(cls, path: Path, *, torch_dtype: torch.dtype | None = None) -> DiT:
        """The model saved in `path` (config.json and the safetensors weights), in eval mode."""
        from safetensors.torch import load_file

        model = cls(merged(DEFAULTS, read_config(Path(path) / CONFIG_NAME)))
        model.load_state_dict(load_file(Path(path) / WEIGHTS_NAME))
        return model.to(dtype=torch_dtype).eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out_2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out_2.weight.device

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> DiTOutput:
        p = self.config.patch_size
        h = self.pos_embed(x)  # (N, T, D)
        for block in self.transformer_blocks:
            h = block(h, timestep, class_labels)
        # The output layer's conditioning is block 0's embedding, as in diffusers.
        conditioning = self.transformer_blocks[0].norm1.emb(timestep, class_labels, h.dtype)  # (N, D)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        h = self.proj_out_2(self.norm_out(h) * (1 + scale[:, None]) + shift[:, None])  # (N, T, p*p*C)
        side = int(h.shape[1] ** 0.5)
        h = h.reshape(-1, side, side, p, p, self.out_channels)
        h = torch.einsum("nhwpqc->nchpwq", h)
        return DiTOutput(h.reshape(-1, self.out_channels, side * p, side * p))  # (N, C, H, W)
