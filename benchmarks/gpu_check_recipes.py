"""GPU check for the sd15, stable-cascade and sdxl-controlnet-canny recipes: half precision, offload, LoRAs, speed.

Run on a CUDA machine:  PYTHONPATH=src:tests python benchmarks/gpu_check_recipes.py --out DIR
Dry run on the CPU:     PYTHONPATH=src:tests python benchmarks/gpu_check_recipes.py --device cpu --skip-full-size

Part 1 runs each recipe on the tiny fixtures through imagegen's Engine (auto dtype: fp16; the cascade prior bf16;
the ControlNet pipeline with the recipe's model CPU offload) and the reference tutorial's own diffusers code in the reference tutorial's
dtypes on the same device, and compares both with CPU float32; then checks that a LoRA leaves nothing behind.
On --device cpu every run is float32 and ours must equal the reference tutorial's code exactly.
Part 2 times SD 1.5's real architecture (random fp16 weights) at 512x512, and, if the budget allows, the full-size
SDXL + canny ControlNet at the reference tutorial's defaults, with and without model CPU offload.

Every case is guarded: an error is recorded in the JSON (DIR/gpu_check_recipes.json), which is rewritten after
each case, so a timeout keeps what was done.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SD15_PROMPT = "1 girl, close-up, black long hair, dunhuang, Chinese ancient style"
CASCADE_PROMPT = "Beautiful and cute girl, rain jacket, gradient background, soft colors"
CONTROLNET_PROMPT = "sea turtle, hard lighting"
LORA_NAME, LORA_WEIGHT = "sd15_kohya", 0.8
SD15_STEPS, CASCADE_PRIOR_STEPS, CASCADE_DECODER_STEPS, CONTROLNET_STEPS = 4, 4, 3, 3
NUM_IMAGES = 2
SEEDS = {"sd15": 3, "stable-cascade": 5, "sdxl-controlnet-canny": 8}


class Report:
    """The JSON report, written to disk after every change so that a killed run leaves its results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": {}, "timeline_s": {}}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def mark(self, name: str) -> None:
        self.data["timeline_s"][name] = round(time.perf_counter() - T0, 1)
        print(f"[{time.perf_counter() - T0:7.1f}s] {name}", flush=True)
        self.save()

    def guarded(self, section: dict, key: str, fn: Callable[[], Any]) -> Any:
        """section[key] = fn(), or the error's text; never raises."""
        start = time.perf_counter()
        try:
            section[key] = fn()
            return section[key]
        except Exception as error:  # noqa: BLE001 - a check must go on
            section[key] = {"error": f"{type(error).__name__}: {error}"[:2000],
                            "traceback": traceback.format_exc()[-3000:]}
            return None
        finally:
            if isinstance(section.get(key), dict):
                section[key]["seconds"] = round(time.perf_counter() - start, 2)
            self.mark(key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--skip-full-size", action="store_true")
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="wall seconds from start after which optional timings are skipped (default 200)")
    args = parser.parse_args()

    report = Report(args.out / "gpu_check_recipes.json")

    def on_term(signum: int, frame: Any) -> None:  # `timeout` sends SIGTERM: keep what was measured
        report.data["timeline_s"]["killed_by_signal"] = round(time.perf_counter() - T0, 1)
        report.data["summary"] = summarize(report.data)
        report.save()
        os._exit(124)

    signal.signal(signal.SIGTERM, on_term)
    image_dir = args.out / "images"
    work = Path(tempfile.mkdtemp(prefix="imagegen-gpu-check-recipes-"))
    cache, lora_dir = work / "hf", work / "loras"
    # Before huggingface_hub is imported: it copies these into its constants on import.
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", MODELSCOPE_CACHE=str(work / "ms"),
                      IMAGEGEN_LORA_DIR=str(lora_dir))

    import torch

    meta = report.data["meta"]
    meta.update(device=args.device, torch=torch.__version__, cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, argv=sys.argv[1:],
                budget_s=args.budget_s)
    for module in ("diffusers", "transformers", "peft", "cv2", "accelerate"):
        try:
            meta[module] = __import__(module).__version__
        except Exception as error:  # noqa: BLE001
            meta[module] = f"unavailable: {error}"
    report.mark("imports")

    fixtures = report.data.setdefault("fixtures", {})
    report.guarded(fixtures, "build", lambda: build_fixtures(cache, lora_dir, work))
    if "error" in fixtures["build"]:
        return 1

    part1 = report.data.setdefault("part1_tiny", {})
    engines = report.guarded(part1, "engines", lambda: make_engines(args.device))
    if isinstance(engines, dict) and "error" not in engines:
        ours, cpu = engines.pop("_objects")
        photo = Path(fixtures["build"]["control_photo"])
        report.guarded(part1, "sd15+lora", lambda: check_sd15(ours, cpu, args.device, image_dir))
        report.guarded(part1, "stable-cascade", lambda: check_cascade(ours, cpu, args.device, image_dir))
        report.guarded(part1, "sdxl-controlnet-canny",
                       lambda: check_controlnet(ours, cpu, args.device, photo, image_dir))
        report.guarded(part1, "lora_no_leak", lambda: check_no_leak(ours))
        del ours, cpu, engines
    free_memory()

    if not args.skip_full_size and not args.device.startswith("cuda"):
        report.data["part2_full_size"] = {"skipped": "full-size timings need a CUDA device"}
    elif not args.skip_full_size:
        part2 = report.data.setdefault("part2_full_size", {})

        def remaining() -> float:
            return args.budget_s - (time.perf_counter() - T0)

        report.guarded(part2, "sd15", lambda: time_sd15_full_size(args.device, cache, remaining, report))
        free_memory()
        if remaining() > 60:
            report.guarded(part2, "sdxl-controlnet-canny",
                           lambda: time_controlnet_full_size(args.device, cache, remaining, report))
        else:
            part2["sdxl-controlnet-canny"] = {"skipped": f"budget: {remaining():.0f} s left"}
        free_memory()
    report.data["summary"] = summarize(report.data)
    report.mark("done")
    print("SUMMARY " + json.dumps(report.data["summary"], indent=1, default=str))
    return 0


def summarize(data: dict) -> dict:
    """The numbers that matter, short enough for a terminal's last screen."""
    summary: dict[str, Any] = {"gpu": data.get("meta", {}).get("gpu"), "timeline_s": data.get("timeline_s")}
    for name, case in data.get("part1_tiny", {}).items():
        if not isinstance(case, dict) or name == "engines":
            continue
        if "error" in case:
            summary[name] = {"error": case["error"]}
            continue
        entry = {key: case[key] for key in ("ours_vs_seed_code_same_dtype", "ours_vs_cpu_float32",
                                            "seed_code_vs_cpu_float32", "no_lora_ours_vs_seed_code",
                                            "lora_changes_image_mean", "first_vs_third", "no_leak") if key in case}
        entry["all_black"] = {key: case[key].get("all_black") for key in case
                              if key.endswith("health") and isinstance(case[key], dict)}
        summary[name] = entry
    for name, case in data.get("part2_full_size", {}).items():
        if isinstance(case, dict):
            summary[f"full:{name}"] = {key: (value.get("median_s", value) if isinstance(value, dict) else value)
                                       for key, value in case.items() if key not in ("traceback",)}
    return summary


# ---------------------------------------------------------------------------------------------- fixtures, helpers


def build_fixtures(cache: Path, lora_dir: Path, work: Path) -> dict:
    from tiny_cascade import build_cascade
    from tiny_controlnet import build_controlnets, write_edge_test_image
    from tiny_models import build_hf_cache
    from tiny_sd15 import build_sd15, write_loras

    build_hf_cache(cache)
    build_sd15(cache)
    build_cascade(cache)
    build_controlnets(cache)
    loras = write_loras(lora_dir)
    photo = write_edge_test_image(work / "canny.jpg", size=(72, 64))  # as tests/recipes/test_controlnet.py
    return {"cache": str(cache), "loras": sorted(str(p) for p in loras.values()), "control_photo": str(photo)}


def make_engines(device: str) -> dict:
    from imagegen.engine import Engine, EngineOptions

    ours = Engine(EngineOptions(device=device))
    cpu = ours if device == "cpu" else Engine(EngineOptions(device="cpu"))
    return {"ours": repr(ours.options), "cpu_reference": repr(cpu.options), "_objects": (ours, cpu)}


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def nan_watch(found: list[str]):
    """Collect numpy's cast warnings: a NaN or inf image turns into 'invalid value encountered in cast'."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    found.extend(str(w.message)[:200] for w in caught if "invalid value" in str(w.message)
                 or "overflow" in str(w.message))


def as_array(images: list) -> Any:
    import numpy as np

    return np.stack([np.asarray(image.convert("RGB"), dtype=np.int16) for image in images])


def health(pixels: Any, nan_warnings: list[str]) -> dict:
    return {"shape": list(pixels.shape), "all_black": bool(pixels.max() == 0),
            "per_image_all_black": [bool(p.max() == 0) for p in pixels],
            "std": round(float(pixels.std()), 2), "nan_or_inf_cast_warnings": nan_warnings[:3]}


def diff(a: Any, b: Any) -> dict:
    import numpy as np

    if a.shape != b.shape:
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    d = np.abs(a - b)
    return {"max": int(d.max()), "mean": round(float(d.mean()), 4), "pixels_differing_pct": round(
        100 * float((d.max(axis=-1) > 0).mean()), 2)}


def run(fn: Callable[[], list]) -> tuple[Any, dict]:
    found: list[str] = []
    with nan_watch(found):
        images = fn()
    pixels = as_array(images)
    return pixels, health(pixels, found)


def save_images(image_dir: Path, name: str, pixels: Any) -> None:
    try:
        import numpy as np
        from PIL import Image

        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(list(pixels), axis=1).astype(np.uint8)).save(image_dir / f"{name}.png")
    except Exception:  # noqa: BLE001 - pictures are a convenience
        pass


def engine_pipe(engine: Any, recipe: str) -> Any:
    for key, (pipe, _) in reversed(engine._pipelines.items()):
        if key[0] == recipe:
            return pipe
    return None


def dtype_of(module: Any) -> str | None:
    if module is None:
        return None
    try:
        return str(next(module.parameters()).dtype)
    except Exception:  # noqa: BLE001
        return str(getattr(module, "dtype", None))


def device_of(module: Any) -> str | None:
    try:
        return str(next(module.parameters()).device)
    except Exception:  # noqa: BLE001
        return None


def describe_pipe(pipe: Any, names: tuple[str, ...]) -> dict:
    """dtype and device of each named component, and the offload state (accelerate hooks) of the pipeline."""
    if pipe is None:
        return {"error": "pipeline not found"}
    out: dict[str, Any] = {"class": type(pipe).__name__}
    for name in names:
        module = getattr(pipe, name, None)
        if module is not None:
            out[name] = {"dtype": dtype_of(module), "device_after_call": device_of(module),
                         "has_hf_hook": hasattr(module, "_hf_hook")}
    out["offload_gpu_id"] = getattr(pipe, "_offload_gpu_id", None)
    out["offload_device"] = str(getattr(pipe, "_offload_device", None))
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        out["vae_force_upcast"] = bool(getattr(vae.config, "force_upcast", False))
    return out


def compare(result: dict, ours: Any, seed: Any, cpu: Any | None, device: str) -> None:
    result["ours_vs_seed_code_same_dtype"] = diff(ours, seed)
    if cpu is not None:
        result["ours_vs_cpu_float32"] = diff(ours, cpu)
        result["seed_code_vs_cpu_float32"] = diff(seed, cpu)
    else:
        result["ours_vs_cpu_float32"] = "same engine on --device cpu"


def generators(seed: int, n: int) -> list:
    import torch

    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


# ---------------------------------------------------------------------------------------------- part 1: sd15


def check_sd15(ours: Any, cpu: Any, device: str, image_dir: Path) -> dict:
    """Ours with '<lora:sd15_kohya:0.8>' vs the reference tutorial's pipeline (fp16, fp16 variant) with the same LoRA at 0.8."""
    from imagegen.request import GenerationRequest

    def request(prompt: str) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, recipe="sd15", seed=SEEDS["sd15"], width=64, height=64,
                                 num_inference_steps=SD15_STEPS, num_images=NUM_IMAGES)

    tagged = f"{SD15_PROMPT} <lora:{LORA_NAME}:{LORA_WEIGHT}>"
    result: dict[str, Any] = {}
    mine, result["ours_health"] = run(lambda: [o.image for o in ours.generate(request(tagged))])
    result["ours_pipeline"] = describe_pipe(engine_pipe(ours, "sd15"), ("unet", "text_encoder", "vae"))
    mine_plain, result["ours_no_lora_health"] = run(lambda: [o.image for o in ours.generate(request(SD15_PROMPT))])
    save_images(image_dir, "sd15_lora_ours", mine)

    seed_plain, seed_lora, result["seed_code"] = seed_sd15(device)
    result["seed_code_health"] = result["seed_code"]["health_with_lora"]
    save_images(image_dir, "sd15_lora_seed", seed_lora)
    reference = None
    if cpu is not ours:
        reference, result["cpu_float32_health"] = run(lambda: [o.image for o in cpu.generate(request(tagged))])
    compare(result, mine, seed_lora, reference, device)
    result["no_lora_ours_vs_seed_code"] = diff(mine_plain, seed_plain)
    result["lora_changes_image_mean"] = diff(mine, mine_plain)["mean"]
    return result


def seed_sd15(device: str) -> tuple[Any, Any, dict]:
    """The reference tutorial: AutoPipelineForText2Image.from_pretrained(..., torch_dtype=torch.float16).to("cuda"), then
    load_lora_weights; here the default SD 1.5 repo with its fp16 variant, no safety checker, and the LoRA at 0.8
    through set_adapters (as imagegen applies a weight)."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from tiny_sd15 import SD15

    half = device != "cpu"
    kwargs = {"torch_dtype": torch.float16, "variant": "fp16"} if half else {"torch_dtype": torch.float32}
    pipe = AutoPipelineForText2Image.from_pretrained(SD15, safety_checker=None, **kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)

    def call() -> list:
        return pipe(SD15_PROMPT, num_inference_steps=SD15_STEPS, guidance_scale=7.5, width=64, height=64,
                    num_images_per_prompt=NUM_IMAGES, generator=generators(SEEDS["sd15"], NUM_IMAGES)).images

    plain, plain_health = run(call)
    lora_dir = Path(os.environ["IMAGEGEN_LORA_DIR"])
    pipe.load_lora_weights(str(lora_dir), weight_name=f"{LORA_NAME}.safetensors", adapter_name="seed")
    pipe.set_adapters(["seed"], adapter_weights=[LORA_WEIGHT])
    with_lora, lora_health = run(call)
    info = {"kwargs": {k: str(v) for k, v in kwargs.items()}, "health_no_lora": plain_health,
            "health_with_lora": lora_health,
            "pipeline": describe_pipe(pipe, ("unet", "text_encoder", "vae"))}
    return plain, with_lora, info


def check_no_leak(ours: Any) -> dict:
    """Without LoRA, with it, without again: the third image must equal the first exactly."""
    from imagegen.request import GenerationRequest

    def generate(prompt: str) -> Any:
        request = GenerationRequest(prompt=prompt, recipe="sd15", seed=11, width=64, height=64,
                                    num_inference_steps=SD15_STEPS)
        return run(lambda: [o.image for o in ours.generate(request)])[0]

    first = generate(SD15_PROMPT)
    with_lora = generate(f"{SD15_PROMPT} <lora:{LORA_NAME}:{LORA_WEIGHT}>")
    third = generate(SD15_PROMPT)
    pipe = engine_pipe(ours, "sd15")
    adapters = pipe.get_list_adapters() if pipe is not None and hasattr(pipe, "get_list_adapters") else None
    leak = diff(first, third)
    return {"first_vs_third": leak, "no_leak": leak.get("max") == 0, "lora_vs_first": diff(with_lora, first),
            "adapters_left_after": adapters}


# ---------------------------------------------------------------------------------------------- part 1: cascade


def check_cascade(ours: Any, cpu: Any, device: str, image_dir: Path) -> dict:
    from tiny_cascade import CASCADE_TEST_SIZE

    from imagegen.request import GenerationRequest

    request = GenerationRequest(prompt=CASCADE_PROMPT, recipe="stable-cascade", seed=SEEDS["stable-cascade"],
                                width=CASCADE_TEST_SIZE, height=CASCADE_TEST_SIZE,
                                num_inference_steps=CASCADE_PRIOR_STEPS, decoder_steps=CASCADE_DECODER_STEPS,
                                num_images=NUM_IMAGES)
    result: dict[str, Any] = {}
    mine, result["ours_health"] = run(lambda: [o.image for o in ours.generate(request)])
    save_images(image_dir, "cascade_ours", mine)
    pipe = engine_pipe(ours, "stable-cascade")
    result["ours_pipeline"] = {
        "class": type(pipe).__name__,
        "prior": describe_pipe(getattr(pipe, "prior", None), ("prior", "text_encoder", "image_encoder")),
        "decoder": describe_pipe(getattr(pipe, "decoder", None), ("decoder", "text_encoder", "vqgan")),
    }
    seed_pixels, result["seed_code"] = seed_cascade(device)
    result["seed_code_health"] = health(seed_pixels, [])
    save_images(image_dir, "cascade_seed", seed_pixels)
    reference = None
    if cpu is not ours:
        reference, result["cpu_float32_health"] = run(lambda: [o.image for o in cpu.generate(request)])
    compare(result, mine, seed_pixels, reference, device)
    return result


def seed_cascade(device: str) -> tuple[Any, dict]:
    """The reference tutorial: prior bf16 and decoder fp16, both from the repos' bf16 variant, embeddings cast with .half()."""
    import torch
    from diffusers import StableCascadeDecoderPipeline, StableCascadePriorPipeline
    from reference_tutorial_cascade import wuerstchen_module_alias
    from tiny_cascade import CASCADE_DECODER, CASCADE_PRIOR, CASCADE_TEST_SIZE

    half = device != "cpu"
    variant = {"variant": "bf16"} if half else {}
    prior_dtype, decoder_dtype = (torch.bfloat16, torch.float16) if half else (torch.float32, torch.float32)
    prior = StableCascadePriorPipeline.from_pretrained(CASCADE_PRIOR, torch_dtype=prior_dtype, **variant).to(device)
    with wuerstchen_module_alias():
        decoder = StableCascadeDecoderPipeline.from_pretrained(CASCADE_DECODER, torch_dtype=decoder_dtype, **variant)
    decoder = decoder.to(device)
    prior.set_progress_bar_config(disable=True)
    decoder.set_progress_bar_config(disable=True)
    generator = generators(SEEDS["stable-cascade"], NUM_IMAGES)
    found: list[str] = []
    with nan_watch(found):
        prior_output = prior(prompt=CASCADE_PROMPT, height=CASCADE_TEST_SIZE, width=CASCADE_TEST_SIZE,
                             negative_prompt="", guidance_scale=4.0, num_images_per_prompt=NUM_IMAGES,
                             num_inference_steps=CASCADE_PRIOR_STEPS, generator=generator)
        embeddings = prior_output.image_embeddings
        embeddings_info = {"dtype": str(embeddings.dtype), "nan": bool(torch.isnan(embeddings).any()),
                           "inf": bool(torch.isinf(embeddings).any()),
                           "abs_max": float(embeddings.float().abs().max())}
        images = decoder(image_embeddings=embeddings.half() if half else embeddings.to(decoder.dtype),
                         prompt=CASCADE_PROMPT, negative_prompt="", guidance_scale=0.0, output_type="pil",
                         num_inference_steps=CASCADE_DECODER_STEPS, generator=generator).images
    info = {"prior_dtype": str(prior_dtype), "decoder_dtype": str(decoder_dtype), **variant,
            "prior_embeddings": embeddings_info, "nan_or_inf_cast_warnings": found[:3],
            "prior": describe_pipe(prior, ("prior", "text_encoder")),
            "decoder": describe_pipe(decoder, ("decoder", "text_encoder", "vqgan"))}
    return as_array(images), info


# ---------------------------------------------------------------------------------------------- part 1: controlnet


def check_controlnet(ours: Any, cpu: Any, device: str, photo: Path, image_dir: Path) -> dict:
    from imagegen.request import GenerationRequest

    request = GenerationRequest(prompt=CONTROLNET_PROMPT, recipe="sdxl-controlnet-canny", control_image=str(photo),
                                num_inference_steps=CONTROLNET_STEPS, seed=SEEDS["sdxl-controlnet-canny"],
                                num_images=NUM_IMAGES)
    result: dict[str, Any] = {}
    mine, result["ours_health"] = run(lambda: [o.image for o in ours.generate(request)])
    save_images(image_dir, "controlnet_ours", mine)
    names = ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2")
    result["ours_pipeline"] = describe_pipe(engine_pipe(ours, "sdxl-controlnet-canny"), names)
    seed_pixels, result["seed_code"] = seed_controlnet(device, photo, names)
    result["seed_code_health"] = health(seed_pixels, [])
    save_images(image_dir, "controlnet_seed", seed_pixels)
    reference = None
    if cpu is not ours:
        reference, result["cpu_float32_health"] = run(lambda: [o.image for o in cpu.generate(request)])
    compare(result, mine, seed_pixels, reference, device)
    return result


def seed_controlnet(device: str, photo: Path, names: tuple[str, ...]) -> tuple[Any, dict]:
    """The reference tutorial: ControlNet fp16, fp16-fix VAE fp16, SDXL base fp16 (fp16 variant), enable_model_cpu_offload(),
    cv2.Canny(100, 200) on the RGB photo; the pipeline's defaults for size (the control image's) and guidance."""
    import cv2
    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        StableDiffusionXLControlNetPipeline,
    )
    from diffusers.utils import load_image
    from PIL import Image
    from tiny_controlnet import CONTROLNET_CANNY, VAE_FP16_FIX
    from tiny_models import SDXL_BASE

    half = device != "cpu"
    dtype = torch.float16 if half else torch.float32
    variant = {"variant": "fp16"} if half else {}
    controlnet = ControlNetModel.from_pretrained(CONTROLNET_CANNY, torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(VAE_FP16_FIX, torch_dtype=dtype)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(SDXL_BASE, controlnet=controlnet, vae=vae,
                                                               torch_dtype=dtype, **variant)
    if device.startswith("cuda"):
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    image = np.array(load_image(str(photo)))
    edges = cv2.Canny(image, 100, 200)[:, :, None]
    control = Image.fromarray(np.concatenate([edges, edges, edges], axis=2))
    found: list[str] = []
    with nan_watch(found):
        images = pipe(CONTROLNET_PROMPT, negative_prompt="low quality, bad quality, sketches", image=control,
                      controlnet_conditioning_scale=0.5, num_inference_steps=CONTROLNET_STEPS, guidance_scale=5.0,
                      num_images_per_prompt=NUM_IMAGES,
                      generator=generators(SEEDS["sdxl-controlnet-canny"], NUM_IMAGES)).images
    info = {"dtype": str(dtype), **variant, "offload": "model" if device.startswith("cuda") else "none",
            "nan_or_inf_cast_warnings": found[:3], "pipeline": describe_pipe(pipe, names)}
    return as_array(images), info


# ---------------------------------------------------------------------------------------------- part 2: timings

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {  # no force_upcast in the real file: diffusers' default (True) applies, as here
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu", "vocab_size": 49408}
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
             "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408}
SDXL_UNET = {
    "sample_size": 128, "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "cross_attention_dim": 2048, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_VAE = {  # the fp16-fix VAE's config: no force_upcast key, so diffusers' default True
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4, "sample_size": 1024,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.13025,
}


# (name, steps, side); the reference tutorial calls SD 1.5 with the pipeline defaults: 50 steps, cfg 7.5, 512x512.
SD15_SETTINGS = [("512x512, 25 steps, cfg 7.5", 25, 512), ("512x512, 50 steps, cfg 7.5 (reference tutorial default)", 50, 512)]
# The reference tutorial's ControlNet call: the control image's size (a 1024x1024 photo), the pipeline's 50 steps, cfg 5.0.
CONTROLNET_SIDE, CONTROLNET_FULL_STEPS = 1024, 50


def timed(pipe_call: Callable[[], Any], device: str, remaining: Callable[[], float], runs: int = 3) -> dict:
    """One warm-up call, then up to `runs` timed calls (fewer when the budget would be exceeded); median."""
    import statistics

    import torch

    def once() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe_call()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    torch.cuda.reset_peak_memory_stats()
    warm = once()
    times = []
    for _ in range(runs):
        estimate = times[-1] if times else warm
        if remaining() < estimate * 1.3 + 5:
            break
        times.append(once())
    return {"warmup_s": round(warm, 3), "runs_s": [round(t, 3) for t in times],
            "median_s": round(statistics.median(times), 3) if times else None,
            "runs_done": len(times), "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def time_sd15_full_size(device: str, cache: Path, remaining: Callable[[], float], report: Report) -> dict:
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from tiny_models import snapshot_path
    from tiny_sd15 import SD15
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tiny = snapshot_path(cache, SD15)
    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    if len(tokenizer) > CLIP_L["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, more than the text encoder's vocabulary")
    start = time.perf_counter()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(SD15_UNET).half().eval()
        vae = AutoencoderKL.from_config(SD15_VAE).half().eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L, pad_token_id=tokenizer.pad_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    bos_token_id=tokenizer.bos_token_id)).half().eval()
    torch.cuda.synchronize()
    result: dict[str, Any] = {
        "build_s": round(time.perf_counter() - start, 2),
        "parameters_million": {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                               for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))},
        "vae_force_upcast": bool(vae.config.force_upcast),
        "attention_processor": type(next(iter(unet.attn_processors.values()))).__name__,
    }
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_pretrained(tiny / "scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    report.data.setdefault("part2_full_size", {})["sd15"] = result
    for name, steps, side in SD15_SETTINGS:
        if remaining() < 10:
            result[name] = {"skipped": "budget"}
            continue
        try:
            result[name] = timed(lambda: pipe(SD15_PROMPT, num_inference_steps=steps, guidance_scale=7.5,
                                              width=side, height=side, generator=torch.Generator("cpu").manual_seed(0),
                                              output_type="pil"), device, remaining)
        except Exception as error:  # noqa: BLE001
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        report.mark(f"sd15 full size: {name}")
    del pipe, unet, vae, text_encoder
    return result


def time_controlnet_full_size(device: str, cache: Path, remaining: Callable[[], float], report: Report) -> dict:
    """SDXL base + a canny ControlNet copied from it (ControlNetModel.from_unet, as the real one was made): the
    reference tutorial's defaults (1024x1024 from the control image, 50 steps, cfg 5, scale 0.5), model offload and none."""
    import cv2
    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image
    from tiny_controlnet import edge_test_image
    from tiny_models import SDXL_BASE, snapshot_path
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    tiny = snapshot_path(cache, SDXL_BASE)
    start = time.perf_counter()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(SDXL_UNET).half().eval()
        controlnet = ControlNetModel.from_unet(unet).half().eval()
        vae = AutoencoderKL.from_config(SDXL_VAE).half().eval()
        clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L)).half().eval()
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)).half().eval()
    torch.cuda.synchronize()
    modules = {"unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": clip_l, "text_encoder_2": clip_g}
    result: dict[str, Any] = {
        "build_s": round(time.perf_counter() - start, 2),
        "parameters_million": {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                               for name, m in modules.items()},
        "vae_force_upcast": bool(vae.config.force_upcast),
        "attention_processor": type(next(iter(unet.attn_processors.values()))).__name__,
    }
    report.data.setdefault("part2_full_size", {})["sdxl-controlnet-canny"] = result
    pipe = StableDiffusionXLControlNetPipeline(
        **modules, tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(tiny / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(tiny / "scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    edges = cv2.Canny(np.array(edge_test_image((CONTROLNET_SIDE, CONTROLNET_SIDE))), 100, 200)[:, :, None]
    control = Image.fromarray(np.concatenate([edges, edges, edges], axis=2))

    def call() -> Any:
        return pipe(CONTROLNET_PROMPT, negative_prompt="low quality, bad quality, sketches", image=control,
                    controlnet_conditioning_scale=0.5, num_inference_steps=CONTROLNET_FULL_STEPS,
                    guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0), output_type="pil")

    setting = f"{CONTROLNET_SIDE}x{CONTROLNET_SIDE}, {CONTROLNET_FULL_STEPS} steps, cfg 5, scale 0.5"
    for name in (f"model CPU offload (recipe default), {setting}", f"no offload, {setting}"):
        if remaining() < 25:
            result[name] = {"skipped": f"budget: {remaining():.0f} s left"}
            continue
        try:
            if "model CPU offload" in name:
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.remove_all_hooks()
                pipe.to(device)
            result[name] = timed(call, device, remaining)
        except Exception as error:  # noqa: BLE001
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        report.mark(f"controlnet full size: {name}")
    del pipe, modules, unet, controlnet, vae, clip_l, clip_g
    return result


if __name__ == "__main__":
    sys.exit(main())
