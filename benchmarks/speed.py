"""Speed per recipe: the reference tutorial's plain diffusers code against imagegen's default, each `--fast` method
alone and all of them, and `imagegen serve` end to end, measured side by side on this machine:

    python benchmarks/speed.py [--device cpu|cuda] [--recipes sdxl-turbo,sdxl,sd15,digits] [--repeats 5]
        [--steps N] [--size mid|full] [--threads N] [--cache DIR] [--no-server] [--out PATH]

Models. The SDXL- and SD 1.5-shaped pipelines have random weights and are saved into a Hugging Face cache under the
real repo ids (stabilityai/sdxl-turbo, stabilityai/stable-diffusion-xl-base-1.0, stable-diffusion-v1-5/...,
madebyollin/taesd and taesdxl), so both ways load them offline exactly as a user's downloads. ``--size full`` (the
default on CUDA) is the real architecture; ``mid`` (the default on a CPU) keeps every depth and head size of the
real models and divides the widths by about 5, so that a UNet step at 512x512 takes ~0.5 s on a CPU and each part
(text encoders, UNet step, VAE decode, tiny VAE decode) keeps roughly its real share of an image's time; the
report prints those parts' times. The built-in `digits` model is the shipped one. The CUDA path (full size, float16,
1024x1024 SDXL at 30 steps) was written on a machine without a GPU and has not run yet.

Cases, per recipe, in one process per recipe:
  a  the reference tutorial's code (tests/reference_tutorial*.py): the pipeline loaded once, then called with a
     seeded CPU generator; for `digits`, which the tutorial lacks, its pipeline called directly
  b  imagegen's default: Engine(EngineOptions(device=...)).generate(GenerationRequest(...))
  c  b with each `fast` method that applies to the recipe and device, alone (compile: its compile is in "first s",
     the timed rounds run compiled, as a warm server does)
  d  b with `fast="all"`, and with "all,compile"
Each case runs once untimed (loading included: "first s"), then the cases run in turn, a b c.. d a b c.. d, for
`--repeats` rounds with seeds SEED, SEED+1, ...  Reported per case: median wall and CPU seconds per image; its time
over a's, the median of the per-round ratios (rounds are close in time, so drift from other jobs cancels out);
the rise of the process's peak RSS during one image over its RSS just before (freed heap handed back with
malloc_trim, then Linux's VmHWM reset through /proc/self/clear_refs: the image's working memory) and the parameter
bytes of the pipeline that ran; on CUDA the peak of allocated GPU memory instead of the RSS rise. For
pixel-changing cases the largest pixel difference and the PSNR against b on the same seeds (meaningless for a
method that swaps in another random model, such as the tiny VAE: marked *), and whether b equals a pixel for pixel.

Server (e): one `imagegen serve` on 127.0.0.1 with the same cache, one client sending OpenAI-style
POST /v1/images/generations requests one after another (the call waits for its image) for digits and sdxl-turbo,
then 16 clients at once for digits: latency per image, images per second and the server's CPU seconds per image,
against the engine's time per image (case b).

Results go to benchmarks/results/speed_<device>.json with the machine's description and the command line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speed_models import MARKER, SIZES, build_cache
from tables import print_rows

BENCHMARKS = Path(__file__).resolve().parent
TESTS = BENCHMARKS.parent / "tests"
RESULTS = BENCHMARKS / "results"
BUILD_VERSION = 1  # bump when the way the cache is written changes
PROMPT = "Beautiful and cute girl, rain jacket, soft lighting"
DIGIT = "7"
SEED = 1000
WARMUP_SEED = 999
MIB = 2**20
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}
RESULT_PREFIX = "SPEED-RESULT "
# Methods that swap in another model: with random weights the stand-in is no distillation of the model it replaces,
# so the pixel difference of a case using one says nothing about its quality cost (real weights would).
SWAPS_MODEL = {"tiny-vae": "the random tiny VAE is no distillation of the random full VAE"}
SERVER_DIGITS_REQUESTS = 20  # sequential digits requests: each takes a tenth of a second, so take more of them
CONCURRENT_CLIENTS = 16
CONCURRENT_ROUNDS = 3


@dataclass(frozen=True)
class Workload:
    """What every case of one recipe draws: the same size, steps and seeds both ways."""

    recipe: str
    side: int  # width and height
    steps: int
    note: str = ""


def workloads(device: str, steps: int | None) -> dict[str, Workload]:
    """The recipes' work on this device; `steps` replaces the multi-step recipes' step counts."""
    if device.startswith("cuda"):
        sdxl, sd15 = Workload("sdxl", 1024, 30), Workload("sd15", 512, 50)  # the recipes' (and tutorial's) defaults
    else:  # the recipe's 30 steps (the goal's), at 512x512; SD 1.5 at DeepCache's study's 25
        sdxl, sd15 = Workload("sdxl", 512, 30), Workload("sd15", 512, 25, "of the recipe's 50, to keep a CPU run short")
    if steps:
        sdxl, sd15 = (Workload(w.recipe, w.side, steps, "set by --steps") for w in (sdxl, sd15))
    return {w.recipe: w for w in (Workload("sdxl-turbo", 512, 1), sdxl, sd15, Workload("digits", 256, 15))}


# ---------------------------------------------------------------------------------------------------- the parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].rstrip(":") + ".")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--recipes", default="sdxl-turbo,sdxl,sd15,digits", help="comma-separated (all four)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of every case (5)")
    parser.add_argument("--steps", type=int, help="steps of sdxl and sd15 (CPU: 30 and 25; CUDA: 30 and 50)")
    parser.add_argument("--size", choices=list(SIZES), help="model widths (mid on a CPU, full on CUDA)")
    parser.add_argument("--threads", type=int, help="torch threads in every process (default: torch's choice)")
    parser.add_argument("--cache", type=Path, help="Hugging Face cache to build into, or reuse if this script "
                                                   "built it at this size (default: a temporary folder)")
    parser.add_argument("--no-server", action="store_true", help="leave out the server cases (e)")
    parser.add_argument("--out", type=Path, help="JSON results (benchmarks/results/speed_<device>.json)")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # child: build the cache
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child: measure one recipe, print JSON
    args = parser.parse_args(argv)
    args.size = args.size or ("full" if args.device.startswith("cuda") else "mid")
    if args.build:
        build_cache(args.cache, args.size, args.device)
        return 0
    if args.measure:
        result = measure(workloads(args.device, args.steps)[args.measure], args.device, args.repeats, args.threads)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = set(recipes) - set(workloads(args.device, None))
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(sorted(unknown))}")
    out = args.out or RESULTS / f"speed_{args.device.split(':')[0]}.json"
    if args.cache:
        return run(args, recipes, args.cache, out)
    with tempfile.TemporaryDirectory(prefix="imagegen-speed-") as folder:
        return run(args, recipes, Path(folder), out)


def run(args: argparse.Namespace, recipes: list[str], cache: Path, out: Path) -> int:
    """Build (or reuse) the cache, measure each recipe in its own process, then the server; report and save.

    This process imports neither torch nor the models, so that its memory and threads stay out of the children's.
    """
    started = time.perf_counter()
    report: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(args.device), "size": args.size, "widths": asdict(SIZES[args.size]),
        "repeats": args.repeats, "threads": args.threads}, "recipes": {}, "server": []}
    needs_cache = any(recipe != "digits" for recipe in recipes) or not args.no_server
    if needs_cache:
        key = _build_key(args.size)
        if _read_marker(cache) != key:
            _child(["--build"], args, cache)
            (cache / MARKER).write_text(json.dumps(key))
        print(f"cache {cache} ({args.size} size) ready after {time.perf_counter() - started:.0f} s", flush=True)
    for recipe in recipes:
        output = _child(["--measure", recipe], args, cache)
        result = json.loads(next(line for line in reversed(output.splitlines())
                                 if line.startswith(RESULT_PREFIX))[len(RESULT_PREFIX):])
        report["recipes"][recipe] = result
        print_recipe(result)
        save(report, out)
    if not args.no_server:
        served = [recipe for recipe in ("digits", "sdxl-turbo") if recipe in recipes]
        if served:
            report["server"] = measure_server(served, args, cache, workloads(args.device, args.steps), report)
            print_server(report["server"])
    report["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    save(report, out)
    print(f"\nwrote {out} (total {report['meta']['seconds']:.0f} s)")
    return 0


def save(report: dict[str, Any], out: Path) -> None:
    """Rewritten after every recipe, so that a run cut short keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def child_env(cache: Path, threads: int | None) -> dict[str, str]:
    env = {**os.environ, **QUIET, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "MODELSCOPE_CACHE": str(cache / "modelscope-empty"),  # imagegen must find all in the HF cache
           "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent / "src"), str(TESTS), str(BENCHMARKS)])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _child(arguments: list[str], args: argparse.Namespace, cache: Path) -> str:
    """Run this script with `arguments` in a fresh interpreter (stderr shown as it comes); its stdout."""
    command = [sys.executable, __file__, *arguments, "--device", args.device, "--size", args.size,
               "--repeats", str(args.repeats), "--cache", str(cache)]
    command += ["--steps", str(args.steps)] * bool(args.steps) + ["--threads", str(args.threads)] * bool(args.threads)
    done = subprocess.run(command, env=child_env(cache, args.threads), stdout=subprocess.PIPE, text=True,
                          check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed (exit {done.returncode}); its output:\n{done.stdout}")
    return done.stdout


def _build_key(size: str) -> dict[str, Any]:
    return {"size": size, "widths": asdict(SIZES[size]), "version": BUILD_VERSION}


def _read_marker(cache: Path) -> dict[str, Any] | None:
    marker = cache / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def machine(device: str) -> dict[str, Any]:
    """The CPU, memory, Python and library versions (read without importing torch), and the device asked for."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("flags")), [])
    memory = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal")), 0)
    versions = {}
    for package in ("torch", "diffusers", "transformers", "imagegen"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "cpu_bf16": [flag for flag in flags if flag in ("avx512_bf16", "amx_bf16")],
            "platform": platform.platform(), "python": platform.python_version(), **versions, "device": device}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------- the model cache


@dataclass
class Case:
    """One way of drawing the recipe's image; `run(seed)` gives a PIL image and the pipeline that drew it."""

    key: str  # a, b, c, d
    name: str
    fast: str | None
    run: Callable[[int], tuple[Any, Any]]
    pipeline: Any = None
    first_s: float = 0.0
    notices: list[str] = field(default_factory=list)
    error: str | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_rise: list[float] = field(default_factory=list)  # MiB
    gpu_peak: list[float] = field(default_factory=list)  # MiB
    images: dict[int, Any] = field(default_factory=dict)  # seed -> (H, W, 3) uint8


def measure(workload: Workload, device: str, repeats: int, threads: int | None) -> dict[str, Any]:
    """Warm every case up, then time them interleaved; quality against b, b against a; the parts' times."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    _quiet()
    cases, skipped = make_cases(workload, device)
    for case in cases:
        _log(workload, f"{case.key} {case.name}: first image (loading included) ...")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.perf_counter()
            try:
                case.pipeline = case.run(WARMUP_SEED)[1]
            except Exception as error:  # a failing method is reported, the others still run
                if case.key in ("a", "b"):
                    raise
                case.error = f"{type(error).__name__}: {error}"
            case.first_s = time.perf_counter() - started
        case.notices = sorted({str(w.message) for w in caught if type(w.message).__name__ == "Notice"})
    live = [case for case in cases if case.error is None]
    for round_index in range(repeats):
        for case in live:
            _time_one(case, SEED + round_index, device)
        _log(workload, f"round {round_index + 1}/{repeats}: " + ", ".join(
            f"{case.key} {case.name} {case.wall[-1]:.2f}s" for case in live))
    result = {"workload": asdict(workload), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "skipped": skipped, "cases": summarize(cases)}
    reference = cases[0].pipeline
    if reference is None:
        result["parameters"] = {}
    elif workload.recipe == "digits":
        result["parameters"] = {"transformer": _count(reference.transformer)}
    else:
        result["parts"], result["parameters"] = parts(reference, workload, device)
    return result


def _quiet() -> None:
    """The loaders' progress bars, offline-mode messages and deprecation warnings would bury the log."""
    import diffusers.utils.logging
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    for logging in (diffusers.utils.logging, huggingface_hub.utils.logging, transformers.utils.logging):
        logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="huggingface_hub")


def _time_one(case: Case, seed: int, device: str) -> None:
    import numpy as np
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _reset_peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    image, case.pipeline = case.run(seed)
    case.wall.append(time.perf_counter() - started)
    case.cpu.append(time.process_time() - cpu)
    peak = _peak_rss()
    if before is not None and peak is not None:
        case.peak_rise.append((peak - before) / MIB)
    if cuda:
        case.gpu_peak.append(torch.cuda.max_memory_allocated() / MIB)
    case.images[seed] = np.asarray(image.convert("RGB"))


def make_cases(workload: Workload, device: str) -> tuple[list[Case], list[str]]:
    """a, b, one c per fast method that applies to the recipe and device, d (all; and all,compile); and why any
    were left out."""
    from imagegen.engine import Engine, EngineOptions
    from imagegen.options import STEP_CACHE_MIN_STEPS

    probe = Engine(EngineOptions(device=device))
    skipped = []
    methods, reason = fast_methods(workload.recipe)
    for name in list(methods):
        few_steps = name == "step-cache" and workload.steps < STEP_CACHE_MIN_STEPS
        unusable = probe.fast_unusable(name) or (f"{workload.steps} steps are too few" if few_steps else None)
        if unusable:
            methods.remove(name)
            skipped.append(f"c {name}: {unusable}")
    if reason:
        skipped.append(f"c, d: {reason}")
    elif not methods:
        skipped.append(f"c, d: no fast method applies to {workload.recipe}")
    alls = ["all", *(["all,compile"] if "compile" in methods else [])] if len(methods) > 1 else []
    fasts = [None, *methods, *alls]
    engine = Engine(EngineOptions(device=device, max_pipelines=len(fasts)))  # every case's pipeline stays warm
    cases = [reference_case(workload, device)]
    for fast in fasts:
        key, name = ("b", "imagegen") if fast is None else ("d", fast) if fast in alls else ("c", fast)
        cases.append(engine_case(engine, workload, key, name, fast))
    if workload.recipe != "digits":  # the latent recipes preview; the built-in pixel-space model does not
        cases.append(engine_case(engine, workload, "p", "previews", None, previews=True))
    return cases, skipped


def fast_methods(recipe_name: str) -> tuple[list[str], str | None]:
    """The `fast` methods that apply to the recipe, or why there are none to try."""
    try:
        from imagegen.options import FAST_METHODS
    except ImportError:
        return [], "this imagegen has no `fast` option"
    from imagegen.recipes import get_recipe

    applies = get_recipe(recipe_name).fast_methods
    return [name for name in FAST_METHODS if name in applies], None


def engine_case(engine: Any, workload: Workload, key: str, name: str, fast: str | None, *,
                previews: bool = False) -> Case:
    """imagegen's engine; with `previews`, live previews at the engine's default rate, each encoded as the server
    sends it (a JPEG), so that their cost shows against b."""
    from imagegen.request import GenerationRequest

    prompt = DIGIT if workload.recipe == "digits" else PROMPT
    options = {"fast": fast} if fast else {}

    def encode(step: int, steps: int, image: Any) -> None:
        image.save(io.BytesIO(), format="JPEG", quality=80)

    def run(seed: int) -> tuple[Any, Any]:
        [result] = engine.generate(GenerationRequest(prompt=prompt, recipe=workload.recipe, seed=seed,
                                                     width=workload.side, height=workload.side,
                                                     num_inference_steps=workload.steps, **options),
                                   on_preview=encode if previews else None)
        return result.image, next(reversed(engine._pipelines.values()))[0]  # the pipeline this call used

    return Case(key, name, fast, run)


def reference_case(workload: Workload, device: str) -> Case:
    """The reference tutorial's code (tests/reference_tutorial*.py), its pipeline loaded on the first call."""
    import torch

    loaded: list[Any] = []
    dtype = torch.float16 if device.startswith("cuda") else torch.float32  # the tutorial's GPU dtype; CPU float32

    def load() -> Any:
        from tiny_models import SDXL_BASE, SDXL_TURBO
        from tiny_sd15 import SD15

        if workload.recipe == "digits":
            from digits_eval import load_pipeline

            from imagegen.recipes.dit import builtin_digits_folder

            return load_pipeline(builtin_digits_folder(), device)
        if workload.recipe == "sdxl-turbo":
            from diffusers import AutoPipelineForText2Image

            pipe = AutoPipelineForText2Image.from_pretrained(SDXL_TURBO, torch_dtype=dtype)
        elif workload.recipe == "sdxl":
            from diffusers import StableDiffusionXLPipeline

            pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, torch_dtype=dtype)
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(SD15, safety_checker=None, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    def run(seed: int) -> tuple[Any, Any]:
        if not loaded:
            loaded.append(load())
        pipe, generator = loaded[0], torch.Generator("cpu").manual_seed(seed)
        if workload.recipe == "digits":
            from PIL import Image

            from imagegen.recipes import get_recipe

            guidance = get_recipe("digits").defaults.guidance_scale
            [image] = pipe(class_labels=[int(DIGIT)], guidance_scale=guidance, num_inference_steps=workload.steps,
                           generator=[generator], output_type="pil").images
            return image.resize((workload.side, workload.side), Image.Resampling.NEAREST), pipe
        # guidance as each tutorial function's default: Turbo 0 (model card), SDXL 5.0, SD 1.5 7.5
        guidance = {"sdxl-turbo": 0.0, "sdxl": 5.0, "sd15": 7.5}[workload.recipe]
        image = pipe(prompt=PROMPT, num_inference_steps=workload.steps, guidance_scale=guidance,
                     width=workload.side, height=workload.side, generator=generator).images[0]
        return image, pipe

    return Case("a", "reference", None, run)


def summarize(cases: list[Case]) -> list[dict[str, Any]]:
    """Per case: medians, ratios to a (median of per-round ratios), quality against b, and b against a."""
    import numpy as np

    by_key = {case.key + case.name: case for case in cases}
    reference, default = by_key["areference"], by_key["bimagegen"]
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case": case.key, "name": case.name, "fast": case.fast, "first_s": case.first_s,
                               "notices": case.notices, "error": case.error, "wall_s": case.wall, "cpu_s": case.cpu}
        if case.error is None and case.wall:
            pipe = case.pipeline
            row.update(
                wall_median_s=statistics.median(case.wall), cpu_median_s=statistics.median(case.cpu),
                wall_vs_a=_paired(case.wall, reference.wall), cpu_vs_a=_paired(case.cpu, reference.cpu),
                wall_speedup_vs_b=_paired(default.wall, case.wall), cpu_speedup_vs_b=_paired(default.cpu, case.cpu),
                peak_rise_mib=max(case.peak_rise) if case.peak_rise else None,
                gpu_peak_mib=max(case.gpu_peak) if case.gpu_peak else None,
                weights_mib=_weight_bytes(pipe) / MIB, dtype=_dtype(pipe))
            against = reference if case.key == "b" else default
            if case.key != "a" and against.images:
                row.update(_difference(case.images, against.images, np))
                row["compared_with"] = against.key
                swapped = [name for name in _methods_of(case) if name in SWAPS_MODEL]
                row["quality_caveat"] = "; ".join(f"{name}: {SWAPS_MODEL[name]}" for name in swapped) or None
        rows.append(row)
    return rows


def _methods_of(case: Case) -> tuple[str, ...]:
    from imagegen.request import fast_methods

    return fast_methods(case.fast) if case.fast else ()


def _paired(times: list[float], base: list[float]) -> float | None:
    """Median over rounds of times[i] / base[i]."""
    pairs = [t / b for t, b in zip(times, base) if b > 0]
    return statistics.median(pairs) if pairs else None


def _difference(images: dict[int, Any], against: dict[int, Any], np: Any) -> dict[str, Any]:
    seeds = sorted(set(images) & set(against))
    diffs = [np.abs(images[s].astype(np.int16) - against[s].astype(np.int16)) for s in seeds]
    mse = float(np.mean([np.mean(d.astype(np.float64) ** 2) for d in diffs]))
    return {"identical": all(int(d.max()) == 0 for d in diffs), "max_diff": max(int(d.max()) for d in diffs),
            "mean_diff": float(np.mean([d.mean() for d in diffs])),
            "psnr_db": None if mse == 0 else 10 * float(np.log10(255**2 / mse)), "seeds": len(seeds)}


def parts(pipe: Any, workload: Workload, device: str) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds of one call of each part of the reference pipeline at the workload's size (the fastest of 5 after one:
    the least disturbed by other jobs),
    and the parts' parameter counts. The UNet's batch is 2 where the recipe uses classifier-free guidance."""
    import torch
    from diffusers import AutoencoderTiny

    cfg = workload.recipe != "sdxl-turbo"
    sdxl = workload.recipe.startswith("sdxl")
    tiny = AutoencoderTiny.from_pretrained("madebyollin/taesdxl" if sdxl else "madebyollin/taesd",
                                           torch_dtype=pipe.vae.dtype).to(device)
    latents = torch.randn(1, 4, workload.side // 8, workload.side // 8, dtype=pipe.unet.dtype, device=device)
    batch = torch.cat([latents] * (2 if cfg else 1))
    with torch.inference_mode():
        encoded = pipe.encode_prompt(prompt=PROMPT, device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=cfg)
        embeds = torch.cat([encoded[1], encoded[0]]) if cfg else encoded[0]  # (batch, 77, cross_attention_dim)
        extra = {}
        if sdxl:
            pooled = torch.cat([encoded[3], encoded[2]]) if cfg else encoded[2]
            time_ids = torch.tensor([[workload.side, workload.side, 0, 0, workload.side, workload.side]] * len(batch),
                                    dtype=embeds.dtype, device=device)
            extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        seconds = {
            "text_encoders": _seconds(lambda: pipe.encode_prompt(prompt=PROMPT, device=device, num_images_per_prompt=1,
                                                                 do_classifier_free_guidance=cfg), device),
            f"unet_batch_{len(batch)}": _seconds(lambda: pipe.unet(batch, 999, embeds, **extra), device),
            "vae_decode": _seconds(lambda: pipe.vae.decode(latents.to(pipe.vae.dtype)), device),
            "tiny_vae_decode": _seconds(lambda: tiny.decode(latents.to(tiny.dtype)), device),
        }
    counts = {name: _count(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder", "text_encoder_2")
              if getattr(pipe, name, None) is not None}
    counts["vae_decoder"] = _count(pipe.vae.decoder)
    counts["tiny_vae_decoder"] = _count(tiny.decoder)
    return seconds, counts


def _seconds(call: Callable[[], Any], device: str) -> float:
    import torch

    def timed() -> float:
        started = time.perf_counter()
        call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    timed()
    return min(timed() for _ in range(5))


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _modules(pipe: Any) -> list[Any]:
    import torch

    return [value for value in vars(pipe).values() if isinstance(value, torch.nn.Module)]


def _weight_bytes(pipe: Any) -> int:
    tensors = {t.data_ptr(): t.numel() * t.element_size()
               for module in _modules(pipe) for t in [*module.parameters(), *module.buffers()]}
    return sum(tensors.values())


def _dtype(pipe: Any) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for m in _modules(pipe) for p in m.parameters()})
    return "+".join(dtypes)


def _reset_peak_rss() -> int | None:
    """Hand freed heap memory back to the system, reset the kernel's peak-RSS mark (VmHWM) to the current RSS and
    return that RSS in bytes (Linux only). Without the trim, memory that one case freed but malloc kept would be
    reused by the next without raising the RSS, and that case's working memory would read as zero."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, AttributeError):
        return None
    return _status_bytes("VmRSS")


def _peak_rss() -> int | None:
    return _status_bytes("VmHWM")


def _status_bytes(field_name: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status in bytes (None where there is no /proc)."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


def _log(workload: Workload, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {workload.recipe}: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- server (e)


def measure_server(recipes: list[str], args: argparse.Namespace, cache: Path, works: dict[str, Workload],
                   report: dict[str, Any]) -> list[dict[str, Any]]:
    """One `imagegen serve`: sequential requests per recipe, then concurrent ones for digits."""
    import psutil

    sys.path.insert(0, str(TESTS))
    from server.conftest import start_server, stop_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="imagegen-speed-server-") as folder:
        server = start_server(Path(folder) / "data", child_env(cache, args.threads), "--device", args.device,
                              api_key=None)
        process = psutil.Process(server.process.pid)
        try:
            for recipe in recipes:
                work = works[recipe]
                count = SERVER_DIGITS_REQUESTS if recipe == "digits" else args.repeats
                _request(server.url, work, WARMUP_SEED)  # loads the pipeline: not timed
                rows.append(_phase(server.url, work, process, 1, [[SEED + i] for i in range(count)], report))
                if recipe == "digits":
                    bursts = [[SEED + r * CONCURRENT_CLIENTS + i for i in range(CONCURRENT_CLIENTS)]
                              for r in range(CONCURRENT_ROUNDS)]
                    rows.append(_phase(server.url, work, process, CONCURRENT_CLIENTS, bursts, report))
            peak = _status_bytes("VmHWM", server.process.pid)
        finally:
            stop_server(server)
    for row in rows:
        row["server_peak_rss_mib"] = peak / MIB if peak else None
    return rows


def _phase(url: str, work: Workload, process: Any, clients: int, rounds: list[list[int]],
           report: dict[str, Any]) -> dict[str, Any]:
    """`rounds` of requests, each round's seeds sent by `clients` threads at once; latency and throughput."""
    latencies, round_seconds = [], []
    cpu_before = sum(process.cpu_times()[:2])
    for seeds in rounds:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies += list(pool.map(lambda seed: _request(url, work, seed), seeds))
        round_seconds.append(time.perf_counter() - started)
    images = sum(len(seeds) for seeds in rounds)
    engine = _engine_seconds(report, work.recipe)
    per_image = sum(round_seconds) / images
    return {"recipe": work.recipe, "workload": asdict(work), "clients": clients, "requests": images,
            "latency_median_s": statistics.median(latencies), "latency_s": latencies,
            "images_per_s": images / sum(round_seconds), "seconds_per_image": per_image,
            "server_cpu_s_per_image": (sum(process.cpu_times()[:2]) - cpu_before) / images,
            "engine_s_per_image": engine, "vs_engine": per_image / engine if engine else None}


def _request(url: str, work: Workload, seed: int) -> float:
    """One OpenAI images call (it waits for the image, returned as base64 PNG); its seconds."""
    import httpx

    body = {"model": work.recipe, "prompt": DIGIT if work.recipe == "digits" else PROMPT,
            "size": f"{work.side}x{work.side}", "seed": seed, "num_inference_steps": work.steps}
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/images/generations", json=body, timeout=600)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{work.recipe}: the server answered {response.status_code}: {response.text[:500]}")
    return seconds


def _engine_seconds(report: dict[str, Any], recipe: str) -> float | None:
    for row in report["recipes"].get(recipe, {}).get("cases", []):
        if row["case"] == "b":
            return row.get("wall_median_s")
    return None


# -------------------------------------------------------------------------------------------------------- tables


def print_recipe(result: dict[str, Any]) -> None:
    work = result["workload"]
    steps = f"{work['steps']} step{'s' * (work['steps'] != 1)}" + (f" ({work['note']})" if work["note"] else "")
    print(f"\n{work['recipe']} {work['side']}x{work['side']}, {steps}; {result['threads']} torch thread(s)"
          + (f", {result['gpu']}" if result["gpu"] else ""))
    gpu = any(row.get("gpu_peak_mib") for row in result["cases"])
    rows = [("case", "wall s", "cpu s", "wall/a", "cpu/a", "speed-up vs b (wall, cpu)", "first s",
             "GPU peak MiB" if gpu else "+peak MiB",
             "weights MiB", "dtype", "max diff", "PSNR dB")]
    for row in result["cases"]:
        label = f"{row['case']} {row['name']}"
        if row.get("error"):
            rows.append((label, f"failed: {row['error'][:100]}", *[""] * 10))
            continue
        quality = ("", "")
        if row["case"] in ("c", "d") and "max_diff" in row:
            mark = "*" if row["quality_caveat"] else ""
            quality = (f"{row['max_diff']}{mark}", "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}{mark}")
        elif row["case"] == "b" and "max_diff" in row:
            quality = (f"{row['max_diff']} vs a", "")
        rows.append((label, f"{row['wall_median_s']:.3f}", f"{row['cpu_median_s']:.3f}", f"{row['wall_vs_a']:.3f}",
                     f"{row['cpu_vs_a']:.3f}", f"{row['wall_speedup_vs_b']:.2f}x, {row['cpu_speedup_vs_b']:.2f}x",
                     f"{row['first_s']:.1f}", _mib(row.get("gpu_peak_mib") or row.get("peak_rise_mib")),
                     _mib(row["weights_mib"]), row["dtype"], *quality))
    print_rows(rows)
    default = next((row for row in result["cases"] if row["case"] == "b"), None)
    if default and "identical" in default:
        print(f"  b equals a pixel for pixel on {default['seeds']} seeds: {'yes' if default['identical'] else 'NO'}")
    for row in result["cases"]:
        for notice in row["notices"]:
            print(f"  note ({row['case']} {row['name']}): {notice}")
    caveats = sorted({row["quality_caveat"] for row in result["cases"] if row.get("quality_caveat")})
    for caveat in caveats:
        print(f"  * says nothing about quality: {caveat}")
    for line in result["skipped"]:
        print(f"  skipped {line}")
    if "parts" in result:
        print("  parts of the reference pipeline, one call each: " + ", ".join(
            f"{name.replace('_', ' ')} {seconds:.3f} s" for name, seconds in result["parts"].items()))
    print("  parameters: " + ", ".join(f"{name} {_millions(count)}" for name, count in result["parameters"].items()))


def print_server(rows: list[dict[str, Any]]) -> None:
    print("\nimagegen serve, OpenAI POST /v1/images/generations (waits; base64 PNG), default --max-batch")
    table = [("recipe", "clients", "requests", "latency s", "images/s", "s/image", "engine s/image",
              "vs engine", "server cpu s/image")]
    for row in rows:
        engine = row["engine_s_per_image"]
        table.append((row["recipe"], str(row["clients"]), str(row["requests"]), f"{row['latency_median_s']:.3f}",
                      f"{row['images_per_s']:.2f}", f"{row['seconds_per_image']:.3f}",
                      f"{engine:.3f}" if engine else "-", f"{row['vs_engine']:.2f}x" if row["vs_engine"] else "-",
                      f"{row['server_cpu_s_per_image']:.3f}"))
    print_rows(table)
    if rows and rows[0]["server_peak_rss_mib"]:
        print(f"  server peak RSS {rows[0]['server_peak_rss_mib']:.0f} MiB")


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 10**6 else f"{count / 1e6:.3f} M"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
