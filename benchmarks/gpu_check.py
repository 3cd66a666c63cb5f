"""What only a GPU can show: the fp16 path, offload modes, the seed contract across devices, full-size speed.

Run on a CUDA machine (CI has none):  PYTHONPATH=src:tests python benchmarks/gpu_check.py [--out DIR]
Part 1 runs every recipe on the tiny fixtures on CPU float32, CUDA float32 and CUDA float16 (the fp16
weight variant), with and without CPU offload, and prints how far apart the images are.
Part 2 times the full-size SDXL architecture (random weights, fp16) end to end through diffusers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a lighthouse at dawn, watercolor"
TINY_CASES = [("sdxl", 4), ("sdxl-turbo", 1), ("lcm-sdxl", 4), ("sdxl-lightning", 4), ("sdxl-lightning", 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--skip-full-size", action="store_true")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="imagegen-gpu-check-"))
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", MODELSCOPE_CACHE=str(cache / "ms"))
    from tiny_models import (
        build_hf_cache,  # after the environment: huggingface_hub reads it on import
    )

    build_hf_cache(cache)
    report = {"tiny": tiny_checks(args.device)}
    if not args.skip_full_size:
        report["full_size"] = full_size_timings(args.device, cache)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def tiny_checks(device: str) -> dict:
    import numpy as np
    import torch

    from imagegen.engine import Engine, EngineOptions
    from imagegen.request import GenerationRequest

    engines = {
        "cpu-float32": Engine(EngineOptions(device="cpu")),
        f"{device}-float32": Engine(EngineOptions(device=device, dtype="float32")),
        f"{device}-auto": Engine(EngineOptions(device=device)),
    }
    if device.startswith("cuda"):
        engines["offload-model"] = Engine(EngineOptions(device=device, offload="model"))
        engines["offload-sequential"] = Engine(EngineOptions(device=device, offload="sequential"))
        engines["vae-tiling-slicing"] = Engine(EngineOptions(device=device, vae_tiling=True, vae_slicing=True))
    results = {}
    for recipe, steps in TINY_CASES:
        request = GenerationRequest(prompt=PROMPT, recipe=recipe, seed=1, num_inference_steps=steps,
                                    width=64, height=64, num_images=2)
        images = {}
        for name, engine in engines.items():
            out = engine.generate(request)
            images[name] = np.stack([np.asarray(o.image, dtype=np.int16) for o in out])
        images[f"diffusers-{device}-float16"] = seed_code_half_precision(recipe, steps, device)
        unet = next(reversed(engines[f"{device}-auto"]._pipelines.values()))[0].unet
        reference = images["cpu-float32"]
        results[f"{recipe}-{steps}"] = {
            "auto_unet_dtype": str(unet.dtype),
            **{f"max_abs_diff_vs_cpu[{name}]": int(np.abs(img - reference).max()) for name, img in images.items()},
            **{f"mean_abs_diff_vs_cpu[{name}]": round(float(np.abs(img - reference).mean()), 3)
               for name, img in images.items()},
            "auto_all_black": bool(images[f"{device}-auto"].max() == 0),
            "max_abs_diff_auto_vs_diffusers_half": int(np.abs(images[f"{device}-auto"]
                                                              - images[f"diffusers-{device}-float16"]).max()),
        }
    results["torch"] = torch.__version__
    results["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return results


def seed_code_half_precision(recipe: str, steps: int, device: str):
    """The reference tutorial's own code in fp16 with the fp16 variant on the GPU: what our half-precision path must match."""
    import numpy as np
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        LCMScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from tiny_models import LCM_SDXL, SDXL_BASE, SDXL_LIGHTNING, SDXL_TURBO

    half = {"torch_dtype": torch.float16, "variant": "fp16"}
    if recipe == "sdxl-turbo":
        pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_TURBO, **half)
    elif recipe == "lcm-sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(
            SDXL_BASE, unet=UNet2DConditionModel.from_pretrained(LCM_SDXL, **half), **half)
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    elif recipe == "sdxl-lightning":
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_BASE, subfolder="unet"))
        unet = unet.to(device, torch.float16)
        unet.load_state_dict(load_file(hf_hub_download(SDXL_LIGHTNING, f"sdxl_lightning_{steps}step_unet.safetensors"),
                                       device=device))
        pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, unet=unet, **half)
        extra = {"prediction_type": "sample"} if steps == 1 else {}
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", **extra)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, **half)
    pipe.to(device)
    out = pipe(PROMPT, num_inference_steps=steps, width=64, height=64, num_images_per_prompt=2,
               guidance_scale={"sdxl": 5.0, "lcm-sdxl": 8.0}.get(recipe, 0.0),
               generator=[torch.Generator("cpu").manual_seed(1 + i) for i in range(2)]).images
    return np.stack([np.asarray(image, dtype=np.int16) for image in out])


def full_size_timings(device: str, cache: Path) -> dict:
    """SDXL's real architecture with random fp16 weights: seconds per image for each recipe's settings."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from tiny_models import SDXL_BASE, snapshot_path
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    tiny = snapshot_path(cache, SDXL_BASE)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).half().eval()
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025, force_upcast=True,
        ).half().eval()
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu",
                                              vocab_size=49408)).half().eval()
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu", vocab_size=49408)).half().eval()
    parameters = sum(p.numel() for m in (unet, vae, clip_l, clip_g) for p in m.parameters())
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=clip_l, text_encoder_2=clip_g,
        tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(tiny / "tokenizer_2"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(tiny / "scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    settings = {
        "sdxl (30 steps, cfg 5, 1024)": (30, 5.0, 1024),
        "sdxl-turbo (1 step, cfg 0, 512)": (1, 0.0, 512),
        "lcm/lightning (4 steps, cfg 0, 1024)": (4, 0.0, 1024),
        "lcm-sdxl (4 steps, cfg 8, 1024)": (4, 8.0, 1024),
    }
    timings: dict[str, object] = {"parameters_billion": round(parameters / 1e9, 3)}
    for name, (steps, guidance, side) in settings.items():
        def once() -> float:
            torch.cuda.synchronize()
            start = time.perf_counter()
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, width=side, height=side,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="pil")
            torch.cuda.synchronize()
            return time.perf_counter() - start

        once()  # warm-up: kernels, allocator
        runs = sorted(once() for _ in range(3))
        timings[f"{name} s/image (median of 3)"] = round(runs[1], 3)
    timings["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return timings


if __name__ == "__main__":
    sys.exit(main())
