"""Write a diffusers SDXL folder as one checkpoint file in Stability's original ("SGM") key layout.

civitai serves SDXL models as a single .safetensors file laid out as Stability's generative-models code saves
them: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``conditioner.embedders.0.*`` (CLIP ViT-L,
in transformers' layout) and ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG, in OpenCLIP's layout).
`write_sdxl_single_file` turns the tiny diffusers repo into such a file, so that tests can feed imagegen's
``--model file.safetensors`` path exactly the weights of a folder whose images they already know.

The mapping is the inverse of diffusers' own reader (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint`` in diffusers/loaders/single_file_utils.py) and is
built from the folder's configs, so it holds for the tiny models' two UNet levels as for real SDXL's three.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."  # the original LDM code's name for SD 1.x's CLIP ViT-L
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# Inside a ResBlock, sgm's openaimodel.py names the layers by their index in nn.Sequential wrappers.
_UNET_RESNET_TAIL = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_TAIL = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_TAIL = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER_TAIL = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


@dataclass(frozen=True)
class _Move:
    """Keys under the diffusers module path `source` go under `target`, the start of their rest renamed by `tail`."""

    source: str
    target: str
    tail: Mapping[str, str] = field(default_factory=dict)

    def apply(self, key: str) -> str:
        rest = key[len(self.source):]
        for old, new in self.tail.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return self.target + rest


def write_sdxl_single_file(diffusers_folder: Path, out: Path) -> Path:
    """Write the folder's unet, vae, text_encoder and text_encoder_2 (their fp32 files) into `out` and return it.

    Every tensor of the folder lands in the file under exactly one key, unchanged but for the layout changes
    diffusers undoes when reading (the VAE's attention weights as 1x1 convolutions, OpenCLIP's fused q/k/v and
    transposed text projection), so ``from_single_file(out, config=diffusers_folder)`` gives back equal tensors.
    """
    return _save(out, {
        UNET_PREFIX: _sgm_unet(_weights(diffusers_folder / "unet"), _config(diffusers_folder / "unet")),
        VAE_PREFIX: _sgm_vae(_weights(diffusers_folder / "vae"), _config(diffusers_folder / "vae")),
        CLIP_L_PREFIX: _sgm_clip(_weights(diffusers_folder / "text_encoder")),
        OPEN_CLIP_PREFIX: _open_clip(_weights(diffusers_folder / "text_encoder_2"),
                                     _config(diffusers_folder / "text_encoder_2")),
    })


def write_sd15_single_file(diffusers_folder: Path, out: Path) -> Path:
    """An SD 1.x checkpoint as civitai serves them (CompVis' LDM layout): its UNet and VAE are named as SDXL's,
    its one text encoder sits under ``cond_stage_model.transformer.``."""
    return _save(out, {
        UNET_PREFIX: _sgm_unet(_weights(diffusers_folder / "unet"), _config(diffusers_folder / "unet")),
        VAE_PREFIX: _sgm_vae(_weights(diffusers_folder / "vae"), _config(diffusers_folder / "vae")),
        SD15_CLIP_PREFIX: _sgm_clip(_weights(diffusers_folder / "text_encoder")),
    })


def _save(out: Path, parts: Mapping[str, Mapping[str, Tensor]]) -> Path:
    from safetensors.torch import save_file

    checkpoint = {prefix + key: tensor.contiguous() for prefix, tensors in parts.items() for key, tensor in tensors.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, out)
    return out


def _weights(component: Path) -> dict[str, Tensor]:
    """The component's fp32 state dict, read from the file diffusers or transformers saved it in."""
    from safetensors.torch import load_file

    names = ("diffusion_pytorch_model.safetensors", "model.safetensors")
    return load_file(next(component / name for name in names if (component / name).is_file()))


def _config(component: Path) -> dict[str, Any]:
    return json.loads((component / "config.json").read_text())


def _moved(tensors: Mapping[str, Tensor], moves: Iterable[_Move]) -> dict[str, Tensor]:
    """Rename every key by the one move whose source it starts with; a key no move covers is a mapping bug."""
    by_source = sorted(moves, key=lambda move: len(move.source), reverse=True)
    renamed: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        move = next((move for move in by_source if key.startswith(move.source)), None)
        if move is None:
            raise KeyError(f"no SGM name for diffusers key {key!r}")
        renamed[move.apply(key)] = tensor
    return renamed


def _sgm_unet(tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """sgm's UNetModel numbers its blocks flat: input_blocks.0 is conv_in, then per level `layers_per_block`
    (ResBlock, SpatialTransformer) pairs and, below the last level, a Downsample; output_blocks mirror that with
    one layer more per level and the Upsample after the last layer's attention, where a level has one."""
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    moves = [
        _Move("time_embedding.linear_1.", "time_embed.0."),
        _Move("time_embedding.linear_2.", "time_embed.2."),
        _Move("add_embedding.linear_1.", "label_emb.0.0."),
        _Move("add_embedding.linear_2.", "label_emb.0.2."),
        _Move("conv_in.", "input_blocks.0.0."),
        _Move("conv_norm_out.", "out.0."),
        _Move("conv_out.", "out.2."),
        _Move("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET_TAIL),
        _Move("mid_block.attentions.0.", "middle_block.1."),
        _Move("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET_TAIL),
    ]
    for level in range(levels):
        for layer in range(per_level):
            block = 1 + level * (per_level + 1) + layer
            moves.append(_Move(f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0.", _UNET_RESNET_TAIL))
            moves.append(_Move(f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1."))
        downsample = 1 + level * (per_level + 1) + per_level
        moves.append(_Move(f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{downsample}.0.op."))
    for level in range(levels):
        for layer in range(per_level + 1):
            block = level * (per_level + 1) + layer
            moves.append(_Move(f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{block}.0.", _UNET_RESNET_TAIL))
            moves.append(_Move(f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1."))
        has_attention = any(key.startswith(f"up_blocks.{level}.attentions.") for key in tensors)
        upsample = f"output_blocks.{level * (per_level + 1) + per_level}.{2 if has_attention else 1}.conv."
        moves.append(_Move(f"up_blocks.{level}.upsamplers.0.conv.", upsample))
    return _moved(tensors, moves)


def _sgm_vae(tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """The LDM autoencoder numbers the decoder's levels from the bottom (up.0 is the last to run), and its
    mid-block attention uses 1x1 convolutions where diffusers has linear layers."""
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    moves = [_Move(name, name) for name in ("quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        moves += [
            _Move(f"{part}.conv_in.", f"{part}.conv_in."),
            _Move(f"{part}.conv_out.", f"{part}.conv_out."),
            _Move(f"{part}.conv_norm_out.", f"{part}.norm_out."),
            _Move(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET_TAIL),
            _Move(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET_TAIL),
            _Move(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION_TAIL),
        ]
    for level in range(levels):
        moves.append(_Move(f"encoder.down_blocks.{level}.downsamplers.0.conv.",
                           f"encoder.down.{level}.downsample.conv."))
        moves += [_Move(f"encoder.down_blocks.{level}.resnets.{layer}.", f"encoder.down.{level}.block.{layer}.",
                        _VAE_RESNET_TAIL) for layer in range(per_level)]
        ldm_level = levels - 1 - level
        moves.append(_Move(f"decoder.up_blocks.{level}.upsamplers.0.conv.", f"decoder.up.{ldm_level}.upsample.conv."))
        moves += [_Move(f"decoder.up_blocks.{level}.resnets.{layer}.", f"decoder.up.{ldm_level}.block.{layer}.",
                        _VAE_RESNET_TAIL) for layer in range(per_level + 1)]
    renamed = _moved(tensors, moves)
    for key, tensor in renamed.items():
        if ".mid.attn_1." in key and tensor.ndim == 2:
            renamed[key] = tensor[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
    return renamed


def _sgm_clip(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """sgm wraps transformers' CLIPTextModel, so only the ``text_model.`` level (which transformers >= 5.6 no
    longer writes for CLIPTextModel) has to be put back."""
    return {"text_model." + key.removeprefix("text_model."): tensor for key, tensor in tensors.items()}


def _open_clip(tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """OpenCLIP fuses each layer's q, k and v projections into one ``in_proj`` (as nn.MultiheadAttention does)
    and stores the text projection as (width, embed_dim), the transpose of nn.Linear's weight."""
    import torch

    remaining = dict(tensors)
    fused: dict[str, Tensor] = {"text_projection": remaining.pop("text_projection.weight").T}
    for layer in range(config["num_hidden_layers"]):
        attention = f"text_model.encoder.layers.{layer}.self_attn."
        for kind in ("weight", "bias"):
            qkv = [remaining.pop(f"{attention}{projection}_proj.{kind}") for projection in "qkv"]
            fused[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)  # (3 * width, ...)
    moves = [
        _Move("text_model.embeddings.token_embedding.", "token_embedding."),
        _Move("text_model.final_layer_norm.", "ln_final."),
        *(_Move(f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}.", _OPEN_CLIP_LAYER_TAIL)
          for layer in range(config["num_hidden_layers"])),
    ]
    fused["positional_embedding"] = remaining.pop("text_model.embeddings.position_embedding.weight")
    return {**fused, **_moved(remaining, moves)}
