"""GPU check for the video recipes animatediff, animatediff-lightning and svd: half precision and speed.

Run on a CUDA machine:  PYTHONPATH=src:tests python benchmarks/gpu_check_video.py --out DIR
Dry run on the CPU:     PYTHONPATH=src:tests python benchmarks/gpu_check_video.py --device cpu --skip-full-size
Part 2 code on the CPU: PYTHONPATH=src:tests python benchmarks/gpu_check_video.py --device cpu --smoke-full-size
                        (Part 2's code path with the tiny fixtures' architectures and tiny sizes: a bug check only)

Part 1 runs each video recipe on the tiny fixtures through imagegen's Engine (auto dtype: fp16) and the docs' /
model card's own diffusers code (tests/reference_tutorial_animatediff.py, tests/reference_tutorial_svd.py) in fp16 on the
same device, and compares both with imagegen's CPU float32 frames.  On --device cpu every run is float32 and ours
must equal the reference code exactly.  Frames are compared in memory; no video file is written (PyAV may be
missing on the GPU machine); a PNG strip of each video's frames goes to DIR/images.
Part 2 times the full-size architectures with random fp16 weights, end to end through plain diffusers pipelines:
AnimateDiff (SD 1.5 UNet/VAE/CLIP-L + the default MotionAdapter) at the recipe's 16 frames 512x512, 25 steps,
cfg 7.5, and AnimateDiff-Lightning's 4 steps, cfg 1.0; then SVD-XT at 25 frames 1024x576, 25 steps, decode chunk
8, with peak GPU memory, the VAE decode alone at chunks 8 and 2, and, if the budget allows, the whole call at chunk 2.

Every case is guarded: an error is recorded in the JSON (DIR/gpu_check_video.json), which is rewritten after each
case, so a timeout keeps what was done.  Helpers (the report, health and diff checks, the SD 1.5 configs) come from
gpu_check_recipes.py.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check_recipes  # noqa: E402
from gpu_check_recipes import (  # noqa: E402
    CLIP_L,
    SD15_UNET,
    SD15_VAE,
    Report,
    as_array,
    compare,
    describe_pipe,
    engine_pipe,
    free_memory,
    health,
    make_engines,
    nan_watch,
    save_images,
)

gpu_check_recipes.T0 = T0  # Report.mark reads its module's T0: one clock for both

PROMPT = "a girl smiling, masterpiece"  # tests/recipes/test_animatediff.py's
SEEDS = {"animatediff": 3, "animatediff-lightning": 3, "svd": 4}
TINY = {  # Part 1 sizes, as the brief / the recipe tests have them
    "animatediff": {"num_frames": 4, "steps": 3, "width": 64, "height": 64},
    "animatediff-lightning": {"num_frames": 4, "steps": 4, "width": 64, "height": 64},
    "svd": {"num_frames": 6, "steps": 3, "width": 64, "height": 40},
}
ANIMATEDIFF_NAMES = ("unet", "motion_adapter", "text_encoder", "vae")
SVD_NAMES = ("unet", "image_encoder", "vae")

# Part 2 -------------------------------------------------------------------------------------------------------
# stabilityai/stable-video-diffusion-img2vid-xt: unet/config.json, vae/config.json, image_encoder/config.json.
SVD_XT_UNET: dict[str, Any] = {
    "addition_time_embed_dim": 256, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "in_channels": 8, "layers_per_block": 2, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25,
    "out_channels": 4, "projection_class_embeddings_input_dim": 768, "sample_size": 96,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
}
SVD_XT_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "out_channels": 3, "sample_size": 768,
    "scaling_factor": 0.18215,
}
VIT_H_14: dict[str, Any] = {  # OpenCLIP ViT-H/14's image tower with its 1024-wide projection
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "num_channels": 3,
}
# (frames, width, height, steps): the recipes' defaults.  --smoke-full-size shrinks them (and the models).
FULL = {"animatediff": (16, 512, 512, 25), "lightning_steps": 4, "svd": (25, 1024, 576, 25)}
SMOKE = {"animatediff": (4, 64, 64, 3), "lightning_steps": 2, "svd": (4, 64, 40, 2)}
WARMUP_STEPS = 2  # a short call warms kernels, allocator and the VAE decode at the real shapes
SVD_CHUNKS = (8, 2)  # the recipe's decode_chunk_size, and a low-memory one
FULL_ANIMATEDIFF, FULL_SVD = "animatediff full size", "svd-xt full size"  # Part 2 keys (and timeline marks)
SVD_RESERVE_S = 75.0  # budget AnimateDiff leaves to SVD (build + 2-step warm-up + one 25-step call + decodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--skip-full-size", action="store_true")
    parser.add_argument("--smoke-full-size", action="store_true",
                        help="run Part 2's code with the tiny fixtures' architectures and sizes (a bug check, "
                             "any device)")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="wall seconds from start after which optional timings are skipped (default 170)")
    args = parser.parse_args()

    report = Report(args.out / "gpu_check_video.json")

    def on_term(signum: int, frame: Any) -> None:  # `timeout` sends SIGTERM: keep what was measured
        report.data["timeline_s"]["killed_by_signal"] = round(time.perf_counter() - T0, 1)
        report.data["summary"] = summarize(report.data)
        report.save()
        os._exit(124)

    signal.signal(signal.SIGTERM, on_term)
    image_dir = args.out / "images"
    work = Path(tempfile.mkdtemp(prefix="imagegen-gpu-check-video-"))
    cache = work / "hf"
    # Before huggingface_hub is imported: it copies these into its constants on import (as tests/conftest.py sets).
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", MODELSCOPE_CACHE=str(work / "ms"),
                      IMAGEGEN_LORA_DIR=str(work / "loras"))

    import torch

    meta = report.data["meta"]
    meta.update(device=args.device, torch=torch.__version__, cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, argv=sys.argv[1:],
                budget_s=args.budget_s)
    for module in ("diffusers", "transformers", "peft", "accelerate", "av"):
        try:
            meta[module] = __import__(module).__version__
        except Exception as error:  # noqa: BLE001
            meta[module] = f"unavailable: {error}"
    report.mark("imports")

    fixtures = report.data.setdefault("fixtures", {})
    report.guarded(fixtures, "build", lambda: build_fixtures(cache, work))
    if "error" in fixtures["build"]:
        report.data["summary"] = summarize(report.data)
        report.save()
        return 1

    part1 = report.data.setdefault("part1_tiny", {})
    engines = report.guarded(part1, "engines", lambda: make_engines(args.device))
    if isinstance(engines, dict) and "error" not in engines:
        ours, cpu = engines.pop("_objects")
        picture = Path(fixtures["build"]["svd_picture"])
        for recipe in ("animatediff", "animatediff-lightning"):
            report.guarded(part1, recipe, lambda recipe=recipe: check_animatediff(recipe, ours, cpu, args.device,
                                                                                  image_dir))
            free_memory()
        report.guarded(part1, "svd", lambda: check_svd(ours, cpu, args.device, picture, image_dir))
        del ours, cpu, engines
    free_memory()

    def remaining() -> float:
        return args.budget_s - (time.perf_counter() - T0)

    if args.skip_full_size:
        pass
    elif not args.smoke_full_size and not args.device.startswith("cuda"):
        report.data["part2_full_size"] = {"skipped": "full-size timings need a CUDA device (or --smoke-full-size)"}
    else:
        part2 = report.data.setdefault("part2_full_size", {})
        sizes = SMOKE if args.smoke_full_size else FULL
        part2["mode"] = "smoke: tiny fixture architectures and sizes" if args.smoke_full_size else "full size"
        if args.smoke_full_size or remaining() > SVD_RESERVE_S + 25:
            report.guarded(part2, FULL_ANIMATEDIFF, lambda: time_animatediff(
                args.device, cache, sizes, args.smoke_full_size, lambda: remaining() - SVD_RESERVE_S, report))
        else:
            part2[FULL_ANIMATEDIFF] = {
                "skipped": f"budget: {remaining():.0f} s left, {SVD_RESERVE_S:.0f} s kept for svd"}
        free_memory()
        if args.smoke_full_size or remaining() > 40:
            report.guarded(part2, FULL_SVD, lambda: time_svd(args.device, cache, sizes, args.smoke_full_size,
                                                          remaining, report))
        else:
            part2[FULL_SVD] = {"skipped": f"budget: {remaining():.0f} s left"}
        free_memory()
    report.data["summary"] = summarize(report.data)
    report.mark("done")
    print("SUMMARY " + json.dumps(report.data["summary"], indent=1, default=str))
    return 0


def summarize(data: dict) -> dict:
    """gpu_check_recipes' summary of Part 1, and per Part 2 setting its median seconds and peak GPU memory."""
    summary = gpu_check_recipes.summarize({**data, "part2_full_size": {}})
    for name, case in data.get("part1_tiny", {}).items():
        if isinstance(case, dict) and name in summary and "error" not in case:
            summary[name]["dtypes_ours"] = {key: value.get("dtype") for key, value in
                                            case.get("ours_pipeline", {}).items() if isinstance(value, dict)}
            summary[name]["nan_warnings"] = {key: case[key].get("nan_or_inf_cast_warnings") for key in case
                                             if key.endswith("health") and isinstance(case[key], dict)}
    for name, case in data.get("part2_full_size", {}).items():
        if not isinstance(case, dict):
            summary[f"part2 {name}"] = case
            continue
        entry: dict[str, Any] = {}
        for key, value in case.items():
            if key == "traceback":
                continue
            if isinstance(value, dict) and ("median_s" in value or "runs_s" in value):
                entry[key] = {k: value[k] for k in ("median_s", "median_s_of_both_runs", "runs_done", "warmup_s",
                                                    "allocated_before_GiB", "peak_gpu_memory_GiB") if k in value}
            elif key in ("parameters_million", "motion_adapter_values_million", "weights_GiB", "build_s", "error",
                         "skipped", "seconds", "config_vs_real"):
                entry[key] = value
            elif isinstance(value, dict) and ("error" in value or "skipped" in value):
                entry[key] = value.get("error", value.get("skipped"))
        summary[name] = entry
    return summary


# ---------------------------------------------------------------------------------------------- fixtures, helpers


def build_fixtures(cache: Path, work: Path) -> dict:
    """tests/conftest.py's cache, limited to what the video recipes read: SD 1.5, the adapters, SVD-XT."""
    from tiny_animatediff import build_animatediff
    from tiny_models import build_hf_cache
    from tiny_sd15 import build_sd15
    from tiny_svd import build_svd, svd_test_image

    build_hf_cache(cache)
    build_sd15(cache)
    build_animatediff(cache)
    build_svd(cache)
    picture = work / "svd_input.png"
    size = (TINY["svd"]["width"], TINY["svd"]["height"])
    svd_test_image(size).save(picture)
    return {"cache": str(cache), "svd_picture": str(picture), "svd_picture_size": list(size)}


def video_health(pixels: Any, nan_warnings: list[str]) -> dict:
    """gpu_check_recipes.health (per frame here) and how much the frames move: a video of identical frames is
    suspicious."""
    import numpy as np

    out = health(pixels, nan_warnings)
    out["per_frame_all_black"] = out.pop("per_image_all_black")
    out["mean_abs_diff_first_vs_last_frame"] = round(float(np.abs(pixels[0] - pixels[-1]).mean()), 3)
    return out


def run_video(fn: Callable[[], list]) -> tuple[Any, dict]:
    """fn() gives one video's frames (PIL); its frames as an int16 array and their health."""
    found: list[str] = []
    with nan_watch(found):
        frames = fn()
    pixels = as_array(frames)
    return pixels, video_health(pixels, found)


def half_kwargs(device: str, half: bool | None) -> tuple[Any, dict, bool]:
    """The reference's dtype, the pipeline repo's variant kwargs, and whether it runs in half: fp16 with the fp16
    variant off the CPU (as the reference tutorial's snippets on CUDA), float32 without a variant on the CPU (as the tests)."""
    import torch

    half = device != "cpu" if half is None else half
    return (torch.float16 if half else torch.float32), ({"variant": "fp16"} if half else {}), half


def _ours(engine: Any, request: Any) -> list:
    return engine.generate(request)[0].frames


# ---------------------------------------------------------------------------------------------- part 1


def check_animatediff(recipe: str, ours: Any, cpu: Any, device: str, image_dir: Path) -> dict:
    from imagegen.request import GenerationRequest

    size = TINY[recipe]
    request = GenerationRequest(prompt=PROMPT, recipe=recipe, seed=SEEDS[recipe], width=size["width"],
                                height=size["height"], num_frames=size["num_frames"],
                                num_inference_steps=size["steps"])
    result: dict[str, Any] = {"request": {"seed": SEEDS[recipe], **size}}
    mine, result["ours_health"] = run_video(lambda: _ours(ours, request))
    result["ours_pipeline"] = describe_pipe(engine_pipe(ours, recipe), ANIMATEDIFF_NAMES)
    save_images(image_dir, f"{recipe}_ours", mine)
    reference = reference_animatediff if recipe == "animatediff" else reference_lightning
    seed_pixels, result["seed_code"] = reference(device, seed=SEEDS[recipe], **size)
    result["seed_code_health"] = result["seed_code"].pop("health")
    save_images(image_dir, f"{recipe}_seed", seed_pixels)
    cpu_pixels = None
    if cpu is not ours:
        cpu_pixels, result["cpu_float32_health"] = run_video(lambda: _ours(cpu, request))
    compare(result, mine, seed_pixels, cpu_pixels, device)
    return result


def reference_animatediff(device: str, *, seed: int, num_frames: int, steps: int, width: int, height: int,
                          half: bool | None = None) -> tuple[Any, dict]:
    """reference_tutorial_animatediff.animatediff as diffusers' docs example runs it on CUDA: the motion adapter
    ``from_pretrained(..., torch_dtype=torch.float16)`` (no variant, as the docs), the SD 1.5 pipeline in fp16
    from its fp16 variant, DDIM as the docs set it, a seeded CPU generator; no CPU offload or VAE slicing (memory
    savers only)."""
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
    from tiny_animatediff import MOTION_ADAPTER
    from tiny_sd15 import SD15

    dtype, variant, half = half_kwargs(device, half)
    adapter = MotionAdapter.from_pretrained(MOTION_ADAPTER, torch_dtype=dtype)
    pipe = AnimateDiffPipeline.from_pretrained(SD15, motion_adapter=adapter, torch_dtype=dtype, **variant)
    pipe.scheduler = DDIMScheduler.from_pretrained(SD15, subfolder="scheduler", clip_sample=False,
                                                   timestep_spacing="linspace", beta_schedule="linear",
                                                   steps_offset=1)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pixels, video = run_video(lambda: pipe(
        prompt=PROMPT, negative_prompt=None, num_frames=num_frames, guidance_scale=7.5, num_inference_steps=steps,
        width=width, height=height, generator=torch.Generator("cpu").manual_seed(seed)).frames[0])
    info = {"dtype": str(dtype), "pipeline_kwargs": variant, "motion_adapter_kwargs": {"torch_dtype": str(dtype)},
            "health": video, "pipeline": describe_pipe(pipe, ANIMATEDIFF_NAMES)}
    return pixels, info


def reference_lightning(device: str, *, seed: int, num_frames: int, steps: int, width: int, height: int,
                        half: bool | None = None) -> tuple[Any, dict]:
    """reference_tutorial_animatediff.animatediff_lightning as the model card runs it (device "cuda", dtype
    torch.float16): the adapter built, cast, and filled from the fp16 checkpoint loaded onto the device; the
    pipeline in fp16 (fp16 variant) and moved there; Euler trailing/linear; guidance 1.0; a seeded CPU
    generator."""
    import torch
    from diffusers import AnimateDiffPipeline, EulerDiscreteScheduler, MotionAdapter
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from tiny_animatediff import (
        ANIMATEDIFF_LIGHTNING,
        MOTION_ADAPTER,
        lightning_file_name,
    )
    from tiny_sd15 import SD15

    dtype, variant, half = half_kwargs(device, half)
    ckpt = lightning_file_name(steps)
    adapter = MotionAdapter.from_config(MotionAdapter.load_config(MOTION_ADAPTER)).to(device, dtype)
    checkpoint = load_file(hf_hub_download(ANIMATEDIFF_LIGHTNING, ckpt), device=device)
    checkpoint_dtypes = sorted({str(tensor.dtype) for tensor in checkpoint.values()})
    adapter.load_state_dict(checkpoint)
    pipe = AnimateDiffPipeline.from_pretrained(SD15, motion_adapter=adapter, torch_dtype=dtype, **variant).to(device)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                        beta_schedule="linear")
    pipe.set_progress_bar_config(disable=True)
    pixels, video = run_video(lambda: pipe(
        prompt=PROMPT, guidance_scale=1.0, num_inference_steps=steps, num_frames=num_frames, width=width,
        height=height, generator=torch.Generator("cpu").manual_seed(seed)).frames[0])
    info = {"dtype": str(dtype), "pipeline_kwargs": variant, "checkpoint": ckpt,
            "checkpoint_dtypes": checkpoint_dtypes, "health": video,
            "pipeline": describe_pipe(pipe, ANIMATEDIFF_NAMES)}
    return pixels, info


def check_svd(ours: Any, cpu: Any, device: str, picture: Path, image_dir: Path) -> dict:
    from imagegen.request import GenerationRequest

    size = TINY["svd"]
    request = GenerationRequest(prompt="", recipe="svd", init_image=str(picture), seed=SEEDS["svd"],
                                width=size["width"], height=size["height"], num_frames=size["num_frames"],
                                num_inference_steps=size["steps"])
    result: dict[str, Any] = {"request": {"seed": SEEDS["svd"], **size}}
    mine, result["ours_health"] = run_video(lambda: _ours(ours, request))
    result["ours_pipeline"] = describe_pipe(engine_pipe(ours, "svd"), SVD_NAMES)
    save_images(image_dir, "svd_ours", mine)
    seed_pixels, result["seed_code"] = reference_svd(device, seed=SEEDS["svd"], **size)
    result["seed_code_health"] = result["seed_code"].pop("health")
    save_images(image_dir, "svd_seed", seed_pixels)
    cpu_pixels = None
    if cpu is not ours:
        cpu_pixels, result["cpu_float32_health"] = run_video(lambda: _ours(cpu, request))
    compare(result, mine, seed_pixels, cpu_pixels, device)
    return result


def reference_svd(device: str, *, seed: int, num_frames: int, steps: int, width: int, height: int,
                  half: bool | None = None) -> tuple[Any, dict]:
    """reference_tutorial_svd.svd as diffusers' SVD guide runs it on CUDA: ``torch_dtype=torch.float16,
    variant="fp16"``, the image resized first, decode_chunk_size 8, the pipeline's defaults otherwise, a CPU
    generator; moved to the device instead of the guide's enable_model_cpu_offload (whole-model offload moves
    weights, it computes the same)."""
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from tiny_svd import SVD_XT, svd_test_image

    dtype, variant, half = half_kwargs(device, half)
    pipe = StableVideoDiffusionPipeline.from_pretrained(SVD_XT, torch_dtype=dtype, **variant)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    image = svd_test_image().resize((width, height))
    pixels, video = run_video(lambda: pipe(
        image, height=height, width=width, num_frames=num_frames, num_inference_steps=steps, min_guidance_scale=1.0,
        max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=8,
        generator=torch.Generator("cpu").manual_seed(seed)).frames[0])
    info = {"dtype": str(dtype), "pipeline_kwargs": variant, "health": video,
            "pipeline": describe_pipe(pipe, SVD_NAMES)}
    return pixels, info


# ---------------------------------------------------------------------------------------------- part 2: timings


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


def timed_runs(call: Callable[[], Any], device: str, remaining: Callable[[], float], *, runs: int = 3,
               warmup: Callable[[], Any] | None = None, warm: bool = True) -> dict:
    """A warm-up (`warmup`, else `call` itself; none when warm=False), then timed calls: the first always, the
    next ones while the budget allows another (last time x 1.3 + 5 s); median and peak GPU memory over them."""
    import torch

    cuda = device.startswith("cuda")
    found: list[str] = []

    def once(fn: Callable[[], Any]) -> float:
        _sync(device)
        start = time.perf_counter()
        with nan_watch(found):
            fn()
        _sync(device)
        return time.perf_counter() - start

    out: dict[str, Any] = {}
    if warm:
        out["warmup_s"] = round(once(warmup or call), 3)
        out["warmup"] = "same call" if warmup is None else f"{WARMUP_STEPS}-step call"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        out["allocated_before_GiB"] = _gib(torch.cuda.memory_allocated())
    times: list[float] = []
    for _ in range(runs):
        if times and remaining() < times[-1] * 1.3 + 5:
            break
        times.append(once(call))
    out.update(runs_s=[round(t, 3) for t in times], median_s=round(statistics.median(times), 3),
               runs_done=len(times), nan_or_inf_cast_warnings=len(found))
    if cuda:
        out["peak_gpu_memory_GiB"] = _gib(torch.cuda.max_memory_allocated())
        out["peak_gpu_reserved_GiB"] = _gib(torch.cuda.max_memory_reserved())
    return out


def _millions(module: Any, buffers: bool = False) -> float:
    tensors = [*module.parameters(), *(module.buffers() if buffers else ())]
    return round(sum(t.numel() for t in tensors) / 1e6, 1)


def _differences(cls: Any, real: dict) -> dict:
    """Where the class's __init__ defaults differ from the real config (lists and tuples alike)."""
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return {key: {"default": norm(defaults.get(key, "<none>")), "real": value} for key, value in real.items()
            if norm(defaults.get(key, "<none>")) != value}


def _keep(record: dict, report: Report, part: str, key: str, fn: Callable[[], Any]) -> None:
    """record[key] = fn() or its error; the report is saved and the timeline marked either way."""
    try:
        record[key] = fn()
    except Exception as error:  # noqa: BLE001 - one setting's failure must not lose the others
        record[key] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    report.mark(f"{part} full size: {key}")
    free_memory()


def time_animatediff(device: str, cache: Path, sizes: dict, smoke: bool, remaining: Callable[[], float],
                     report: Report) -> dict:
    """SD 1.5 (UNet, VAE, CLIP-L) + MotionAdapter() in fp16 on the GPU, assembled as AnimateDiffPipeline does
    (UNetMotionModel.from_unet2d); the recipe's DDIM at 25 steps cfg 7.5, then Lightning's Euler at 4 steps cfg 1."""
    import torch
    from diffusers import (
        AnimateDiffPipeline,
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        MotionAdapter,
        UNet2DConditionModel,
    )
    from tiny_animatediff import MOTION_ADAPTER
    from tiny_models import snapshot_path
    from tiny_sd15 import SD15
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tiny = snapshot_path(cache, SD15)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    if smoke:
        unet_config = UNet2DConditionModel.load_config(tiny / "unet")
        vae_config = AutoencoderKL.load_config(tiny / "vae")
        text_config = CLIPTextConfig.from_pretrained(tiny / "text_encoder")
        known = inspect.signature(MotionAdapter.__init__).parameters
        adapter_config = {k: v for k, v in MotionAdapter.load_config(snapshot_path(cache, MOTION_ADAPTER)).items()
                          if k in known}
    else:
        if len(tokenizer) > CLIP_L["vocab_size"]:
            raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, more than the text encoder's vocabulary")
        unet_config, vae_config, adapter_config = SD15_UNET, SD15_VAE, {}
        text_config = CLIPTextConfig(**CLIP_L, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    base_scheduler = DDIMScheduler.from_pretrained(tiny, subfolder="scheduler", clip_sample=False,
                                                   timestep_spacing="linspace", beta_schedule="linear",
                                                   steps_offset=1)
    start = time.perf_counter()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_config).to(dtype).eval()
        vae = AutoencoderKL.from_config(vae_config).to(dtype).eval()
        text_encoder = CLIPTextModel(text_config).to(dtype).eval()
        adapter = MotionAdapter(**adapter_config).to(dtype).eval()
        parameters = {"unet_2d": _millions(unet), "motion_adapter": _millions(adapter), "vae": _millions(vae),
                      "text_encoder": _millions(text_encoder)}
        # The pipeline turns the 2D UNet into a UNetMotionModel (built in float32 where the device context puts it,
        # then cast to the UNet's dtype): what from_pretrained(..., motion_adapter=...) does with real weights.
        pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   motion_adapter=adapter, scheduler=base_scheduler)
    del unet
    free_memory()
    _sync(device)
    parameters["unet_motion"] = _millions(pipe.unet)
    result: dict[str, Any] = {
        "build_s": round(time.perf_counter() - start, 2), "parameters_million": parameters,
        "unet_dtype": str(pipe.unet.dtype), "unet_device": str(pipe.unet.device),
        "motion_adapter_values_million": _millions(adapter, buffers=True),  # + the positional tables: the checkpoint
        "motion_adapter_config_is_default": not adapter_config,
        "attention_processor": type(next(iter(pipe.unet.attn_processors.values()))).__name__,
    }
    report.data.setdefault("part2_full_size", {})[FULL_ANIMATEDIFF] = result
    pipe.set_progress_bar_config(disable=True)
    frames, width, height, steps = sizes["animatediff"]
    lightning_steps = sizes["lightning_steps"]
    lightning_scheduler = EulerDiscreteScheduler.from_config(base_scheduler.config, timestep_spacing="trailing",
                                                             beta_schedule="linear")

    def call(n_steps: int, guidance: float) -> Callable[[], Any]:
        return lambda: pipe(PROMPT, num_frames=frames, width=width, height=height, num_inference_steps=n_steps,
                            guidance_scale=guidance, decode_chunk_size=frames,
                            generator=torch.Generator("cpu").manual_seed(0), output_type="pil")

    name = f"animatediff: {frames} frames {width}x{height}, {steps} steps DDIM, cfg 7.5, decode chunk {frames}"

    def recipe_default() -> dict:
        pipe.scheduler = base_scheduler
        return timed_runs(call(steps, 7.5), device, remaining, runs=2, warmup=call(WARMUP_STEPS, 7.5))

    _keep(result, report, "animatediff", name, recipe_default)
    name = f"animatediff-lightning: {frames} frames {width}x{height}, {lightning_steps} steps Euler trailing, cfg 1.0"
    if remaining() > 10:
        def lightning() -> dict:
            pipe.scheduler = lightning_scheduler
            return timed_runs(call(lightning_steps, 1.0), device, remaining, runs=3)

        _keep(result, report, "animatediff", name, lightning)
    else:
        result[name] = {"skipped": f"budget: {remaining():.0f} s left"}
    return result


def time_svd(device: str, cache: Path, sizes: dict, smoke: bool, remaining: Callable[[], float],
             report: Report) -> dict:
    """SVD-XT's UNet, temporal-decoder VAE and ViT-H/14 image encoder in fp16 on the GPU, with the real scheduler
    and feature extractor configs (the fixture's); the recipe's call (25 frames 1024x576, 25 steps, guidance 1->3,
    fps 7, motion bucket 127, noise 0.02, decode chunk 8), then the VAE decode alone at chunks 8 and 2, then the
    whole call at chunk 2 and a second call at chunk 8 as the budget allows."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from tiny_models import snapshot_path
    from tiny_svd import SVD_XT, svd_test_image
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tiny = snapshot_path(cache, SVD_XT)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    result: dict[str, Any] = {}
    report.data.setdefault("part2_full_size", {})[FULL_SVD] = result
    if smoke:
        unet_config = UNetSpatioTemporalConditionModel.load_config(tiny / "unet")
        vae_config = AutoencoderKLTemporalDecoder.load_config(tiny / "vae")
        vision_config = CLIPVisionConfig.from_pretrained(tiny / "image_encoder")
    else:
        unet_config, vae_config, vision_config = SVD_XT_UNET, SVD_XT_VAE, CLIPVisionConfig(**VIT_H_14)
        result["config_vs_real"] = {
            "unet_defaults_differing_from_real": _differences(UNetSpatioTemporalConditionModel, SVD_XT_UNET),
            "vae_defaults_differing_from_real": _differences(AutoencoderKLTemporalDecoder, SVD_XT_VAE),
            "built_from": "the real configs above",
        }
    start = time.perf_counter()
    with torch.device(device):
        # .to(device) as well: a few modules create their buffers on the CPU whatever the default device.
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config).to(device, dtype).eval()
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config).to(device, dtype).eval()
        image_encoder = CLIPVisionModelWithProjection(vision_config).to(device, dtype).eval()
    _sync(device)
    result.update({
        "build_s": round(time.perf_counter() - start, 2),
        "parameters_million": {"unet": _millions(unet), "vae": _millions(vae),
                               "image_encoder": _millions(image_encoder)},
        "unet_num_frames": unet.config.num_frames, "vae_force_upcast": bool(vae.config.force_upcast),
        "attention_processor": type(next(iter(unet.attn_processors.values()))).__name__,
        "image_encoder_attention": getattr(image_encoder.config, "_attn_implementation", None),
    })
    if device.startswith("cuda"):
        result["weights_GiB"] = _gib(torch.cuda.memory_allocated())
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(tiny, subfolder="scheduler"),
        feature_extractor=CLIPImageProcessor.from_pretrained(tiny, subfolder="feature_extractor"))
    pipe.set_progress_bar_config(disable=True)
    del unet, vae, image_encoder
    frames, width, height, steps = sizes["svd"]
    image = svd_test_image((width, height))
    report.mark("svd full size: built")

    def call(n_steps: int, chunk: int) -> Callable[[], Any]:
        return lambda: pipe(image, height=height, width=width, num_frames=frames, num_inference_steps=n_steps,
                            min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127,
                            noise_aug_strength=0.02, decode_chunk_size=chunk,
                            generator=torch.Generator("cpu").manual_seed(0), output_type="pil")

    setting = f"{frames} frames {width}x{height}, {steps} steps, cfg 1->3"
    main_name = f"svd: {setting}, decode chunk {SVD_CHUNKS[0]}"
    _keep(result, report, "svd", main_name, lambda: timed_runs(
        call(steps, SVD_CHUNKS[0]), device, remaining, runs=1, warmup=call(WARMUP_STEPS, SVD_CHUNKS[0])))

    latents = torch.randn((1, frames, 4, height // 8, width // 8), generator=torch.Generator("cpu").manual_seed(1))
    latents = latents.to(device, dtype)
    for chunk in SVD_CHUNKS:
        name = f"vae decode alone: {frames} frames {width}x{height}, chunk {chunk}"
        if remaining() < 8:
            result[name] = {"skipped": f"budget: {remaining():.0f} s left"}
            continue

        def decode(chunk: int = chunk) -> dict:
            def once() -> Any:
                with torch.inference_mode():
                    return pipe.decode_latents(latents, frames, chunk)

            return timed_runs(once, device, remaining, runs=2, warm=chunk != SVD_CHUNKS[0])

        _keep(result, report, "svd", name, decode)

    main = result.get(main_name, {})
    estimate = (main.get("median_s") or 60.0) if isinstance(main, dict) else 60.0
    for chunk, name, already in ((SVD_CHUNKS[1], f"svd: {setting}, decode chunk {SVD_CHUNKS[1]}", False),
                                 (SVD_CHUNKS[0], f"{main_name}, second run", True)):
        if remaining() < estimate * 1.2 + 5:
            result[name] = {"skipped": f"budget: {remaining():.0f} s left, a call takes about {estimate:.0f} s"}
            continue
        _keep(result, report, "svd", name,
              lambda chunk=chunk: timed_runs(call(steps, chunk), device, remaining, runs=1, warm=False))
        if already and isinstance(result.get(name), dict) and isinstance(main, dict) and main.get("runs_s"):
            both = main["runs_s"] + result[name]["runs_s"]
            main["median_s_of_both_runs"] = round(statistics.median(both), 3)
    return result


if __name__ == "__main__":
    sys.exit(main())
