"""Run generation requests: assemble (and keep warm) recipe pipelines, seed them, report progress.

The reproducibility contract lives here: image i of a request with seed s draws its noise from
`torch.Generator("cpu").manual_seed(s + i)`, on the CPU and then moved to the device (as ComfyUI
does), so a seed means the same image on every device up to kernel precision.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagegen.errors import (
    Cancelled,
    InvalidOutput,
    InvalidRequest,
    ModelNotFound,
)
from imagegen.models.components import ComponentStore, Precision
from imagegen.models.devices import (
    SDPA_BACKENDS,
    cpu_has_bf16,
    fp8_unsupported,
    pick_device,
    pick_dtype,
    sdpa_backend,
    use_threads,
)
from imagegen.models.loras import LoraLibrary
from imagegen.models.loras import applied as applied_loras
from imagegen.models.pull import is_ready
from imagegen.models.schedulers import describe, get_scheduler_choice, make_scheduler
from imagegen.models.sources import LocalModel, ModelRef, locate, parse_model_argument
from imagegen.outputs.results import GeneratedImage, GeneratedVideo
from imagegen.recipes import get_recipe
from imagegen.recipes.base import Recipe
from imagegen.request import GenerationRequest, fast_methods, note_left_out

OFFLOAD_MODES = ("auto", "none", "model", "sequential")
ProgressFn = Callable[[int, int], None]
PreviewFn = Callable[[int, int, Any], None]  # (step, steps, PIL image): a live preview of the first image
PREVIEW_INTERVAL_S = 0.25  # at most a few previews per second of wall time: each costs a small decode


@dataclass(frozen=True)
class EngineOptions:
    """How the engine uses the machine; fixed for an engine's life, since loaded pipelines depend on it."""

    device: str = "auto"
    dtype: str = "auto"
    # "model": whole models move to the GPU in turn; "sequential": layer by layer; "auto": the recipe's choice
    # (the reference tutorial offloads its ControlNet pipeline), never on the CPU.
    offload: str = "auto"
    vae_tiling: bool = False
    vae_slicing: bool = False
    allow_pickle: bool = False
    max_pipelines: int = 2  # assembled pipelines kept warm; their shared components count once
    lora_names_only: bool = False  # a server's: LoRAs by name from the LoRA folder only, never by path
    attention: str = "auto"  # torch's scaled-dot-product attention kernel (devices.SDPA_BACKENDS); auto: torch picks
    threads: int | None = None  # torch's CPU threads (intra- and inter-op); None: torch's default (one per core)


class Engine:
    """Keeps pipelines warm between requests; one request runs at a time."""

    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        if options.offload not in OFFLOAD_MODES:
            raise InvalidRequest(f"unknown offload mode {options.offload!r}; choose one of {', '.join(OFFLOAD_MODES)}")
        if options.attention not in SDPA_BACKENDS:
            raise InvalidRequest(f"unknown attention kernel {options.attention!r}; choose one of "
                                 f"{', '.join(SDPA_BACKENDS)}")
        self.options = options
        self.device = pick_device(options.device)
        if options.threads is not None:
            use_threads(options.threads)
        if options.offload not in ("none", "auto") and self.device == "cpu":
            raise InvalidRequest("CPU offload moves models between the CPU and a GPU; there is no GPU here")
        self.store = ComponentStore(allow_pickle=options.allow_pickle)
        self.loras = LoraLibrary(names_only=options.lora_names_only)
        self._pipelines: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._previewers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def generate(self, request: GenerationRequest, *, on_step: ProgressFn | None = None,
                 cancel: threading.Event | None = None,
                 on_preview: PreviewFn | None = None) -> list[GeneratedImage] | list[GeneratedVideo]:
        """Run one request; `on_step(i, n)` after each denoising step; `cancel` set stops before the next;
        `on_preview(i, n, image)` a few times a second with a preview of the first image (latent recipes only).

        Image recipes give one GeneratedImage per image, video recipes one GeneratedVideo per video.
        """
        return self.generate_many([request], on_step=on_step, cancel=cancel, on_preview=on_preview)[0]

    @staticmethod
    def batch_key(request: GenerationRequest) -> GenerationRequest | None:
        """Resolved requests with equal keys may share one pipeline call: only prompt, seed and count differ.

        None for recipes whose pipelines cannot take a list of prompts (or whose batch members interact).
        """
        if get_recipe(request.recipe).batch_prompts is None:
            return None
        return replace(request, prompt="", seed=0, num_images=1)

    def generate_many(self, requests: list[GenerationRequest], *, on_step: ProgressFn | None = None,
                      cancel: threading.Event | None = None, on_preview: PreviewFn | None = None,
                      ) -> list[list[GeneratedImage] | list[GeneratedVideo]]:
        """Run requests of equal `batch_key` in one pipeline call (each image keeps its own seed), a server's
        throughput trick; the results, per request, are those of running each alone (up to the CPU's batch-size
        dependent rounding, at most one level)."""
        import torch

        from imagegen.parameters import infotext_for

        recipe = get_recipe(requests[0].recipe)
        resolved = [self.usable_fast(request.resolve(recipe)) for request in requests]
        if len(resolved) > 1 and (len({self.batch_key(request) for request in resolved}) != 1
                                  or self.batch_key(resolved[0]) is None):
            raise InvalidRequest("these requests differ in more than prompt, seed and count: run them one by one")
        first = resolved[0]
        loras = [self.loras.load(spec) for spec in first.loras]  # a missing LoRA fails before any model loads
        seeds = [seed for request in resolved for seed in request.image_seeds()]
        prompts = [request.prompt for request in resolved for _ in request.image_seeds()]
        # A pipeline whose batch members interact (SVD's temporal decoder mixes frames across videos) runs
        # one seed per call, so that result i is exactly what seed s + i gives alone.
        calls = [[seed] for seed in seeds] if recipe.one_seed_per_call else [seeds]
        with self._lock:
            pipe, recipe_schedulers = self._pipeline(recipe, first)
            # Fresh schedulers per call: schedulers keep per-run state (timesteps, step index).
            schedulers = {slot: type(scheduler).from_config(scheduler.config)
                          for slot, scheduler in recipe_schedulers.items()}
            main_slot = recipe.scheduler_slots[0]
            # Naming the recipe's own scheduler (as a replayed infotext does) keeps it: the same class and config,
            # and the built-in recipe stays on its diffusers-free path.
            if first.scheduler and get_scheduler_choice(first.scheduler) != describe(recipe_schedulers[main_slot]):
                schedulers[main_slot] = make_scheduler(first.scheduler, recipe_schedulers[main_slot].config)
            progress = _Progress(recipe.total_steps(first) * len(calls), on_step, cancel,
                                 self._previewer(pipe) if on_preview else None, on_preview)
            for slot, scheduler in schedulers.items():
                progress.observe(scheduler)
                _set_attribute(pipe, slot, scheduler)
            try:
                with applied_loras(pipe, loras):
                    # Built once (it reads input images, computes Canny edges): the same for every call. Several
                    # requests give one prompt per image, so num_images_per_prompt is then 1.
                    arguments = recipe.arguments(pipe, replace(first, num_images=len(calls[0])
                                                               if len(resolved) == 1 else 1))
                    if len(resolved) > 1:
                        arguments.update(recipe.batch_prompts(pipe, prompts))
                    outputs = []
                    for call_seeds in calls:
                        with _nan_guard(), self._during_call(pipe, recipe, first):
                            outputs.append(pipe(**arguments, output_type="pil", generator=[
                                torch.Generator("cpu").manual_seed(seed) for seed in call_seeds]))
            finally:
                for slot, scheduler in recipe_schedulers.items():  # the cached pipeline never keeps a request's
                    _set_attribute(pipe, slot, scheduler)
        sampler = describe(schedulers[main_slot])
        hashes = [(lora.spec, lora.short_hash) for lora in loras]
        results = iter([frames for output in outputs for frames in output.frames] if recipe.video
                       else [image for output in outputs for image in output.images])
        return [[self._result(recipe, request, next(results), seed, infotext_for(request, seed, sampler, hashes))
                 for seed in request.image_seeds()] for request in resolved]

    @staticmethod
    def _result(recipe: Recipe, request: GenerationRequest, output: Any, seed: int,
                infotext: str) -> GeneratedImage | GeneratedVideo:
        if recipe.video:
            return GeneratedVideo(list(output), seed, infotext, request)
        return GeneratedImage(recipe.postprocess(output, request), seed, infotext, request)

    def _previewer(self, pipe: Any) -> Any:
        """The pipeline VAE's previewer, kept while the VAE lives (fitting its colour map costs one small encode)."""
        vae = getattr(pipe, "vae", None)
        if vae is None:
            return None
        from imagegen.pipelines.previews import LatentPreviewer

        if vae not in self._previewers:
            self._previewers[vae] = LatentPreviewer(vae)
        return self._previewers[vae]

    def usable_fast(self, request: GenerationRequest) -> GenerationRequest:
        """The resolved request without the --fast methods this engine's device or installation cannot use, each
        left out with a Notice (the image is still made)."""
        methods = fast_methods(request.fast)
        reasons = {name: reason for name in methods if (reason := self.fast_unusable(name))}
        note_left_out(reasons)
        if not reasons:
            return request
        return replace(request, fast=",".join(name for name in methods if name not in reasons) or None)

    def fast_unusable(self, method: str) -> str | None:
        """Why this engine cannot use a --fast method, or None."""
        if method == "bf16":  # a GPU already runs in half precision; a CPU needs bf16 instructions
            return ("--dtype is given" if self.options.dtype != "auto" else None if self.device == "cpu" and
                    cpu_has_bf16() else f"{self.device} already runs in half precision" if self.device != "cpu"
                    else "this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
        if method in ("int8", "fp8"):
            if importlib.util.find_spec("torchao") is None:
                return "needs torchao: pip install 'imagegen[quantize]'"
            if method == "fp8":
                return fp8_unsupported(self.device)
            return None if self.device == "cpu" or self.device.startswith("cuda") else \
                f"torchao's int8 runs on CPUs and CUDA GPUs, not {self.device}"
        if method == "step-cache" and importlib.util.find_spec("DeepCache") is None:
            return "needs the DeepCache package: pip install DeepCache"
        return None

    def _during_call(self, pipe: Any, recipe: Recipe, request: GenerationRequest) -> AbstractContextManager[Any]:
        """What wraps each pipeline call: the SDPA backend asked for, and the per-call --fast methods."""
        stack = ExitStack()
        if self.options.attention != "auto":
            stack.enter_context(sdpa_backend(self.options.attention))
        methods = fast_methods(request.fast)
        if methods:
            from imagegen.fast import during_call

            stack.enter_context(during_call(pipe, recipe, methods))
        return stack

    def is_ready(self, recipe: Recipe) -> bool:
        """Whether every file `recipe` loads in this engine's precision is on disk: it runs offline, and
        `imagegen pull` would fetch nothing."""
        return is_ready(recipe, functools.partial(self.precision, recipe))

    def precision(self, recipe: Recipe, role: str = "base", fast: str | None = None) -> Precision:
        """Where and in which dtype the recipe's `role` model runs; on a GPU, offloaded as the recipe asks. A request
        with `--fast bf16` (kept by `usable_fast` only on a CPU with bf16 instructions) runs in bfloat16."""
        dtype = pick_dtype(self.device, self.options.dtype, recipe.role_gpu_dtypes.get(role, recipe.gpu_dtype))
        if "bf16" in fast_methods(fast):
            dtype = "bfloat16"
        offload = self.options.offload
        if offload == "auto":
            offload = "none" if self.device.startswith(("cpu", "mps")) else recipe.gpu_offload
        model = recipe.models.get(role)
        half_variant = model.half_variant if isinstance(model, ModelRef) else "fp16"
        treated = ""
        if fast:
            from imagegen.fast import AFTER_PLACEMENT

            treated = ",".join(name for name in fast_methods(fast) if name in AFTER_PLACEMENT)
        return Precision(self.device, dtype, offload, half_variant, treated)

    def is_loaded(self, request: GenerationRequest) -> bool:
        """Whether the request's pipeline is warm in this engine (a worker sharing a queue prefers such jobs)."""
        return self._pipeline_key(get_recipe(request.recipe), request) in self._pipelines

    def _pipeline_key(self, recipe: Recipe, request: GenerationRequest) -> tuple:
        task = request.task if recipe.image_inputs else "txt2img"  # image-conditioned pipelines take it as is
        return (recipe.name, request.model, recipe.cache_key(request), self.precision(recipe, fast=request.fast), task,
                request.fast)

    def _pipeline(self, recipe: Recipe, request: GenerationRequest) -> tuple[Any, Any]:
        """The recipe's pipeline for this request, from the warm cache or assembled now.

        img2img and inpainting pipelines are diffusers' AutoPipeline forms of the recipe's text-to-image
        pipeline, made with from_pipe: they reference the same loaded modules, no second copy.
        """
        precision = self.precision(recipe, fast=request.fast)
        task = request.task if recipe.image_inputs else "txt2img"  # image-conditioned pipelines take it as is
        key = self._pipeline_key(recipe, request)
        if key in self._pipelines:
            self._pipelines.move_to_end(key)
            return self._pipelines[key]
        if task == "txt2img":
            pipe = recipe.build(_Context(self.store, recipe, request,
                                         functools.partial(self.precision, recipe, fast=request.fast)))
            methods = fast_methods(request.fast)
            if methods:  # opt-in: the default path never imports imagegen.fast
                from imagegen.fast import optimize, prepare

                prepare(pipe, recipe, methods, self.store, precision)
            self._place(pipe, precision.offload)
            if methods:
                optimize(pipe, recipe, methods, self.store, precision)
        else:
            text_pipe, text_schedulers = self._pipeline(
                recipe, replace(request, init_image=None, mask_image=None, strength=None))
            import diffusers

            pipe = getattr(diffusers, _TASK_PIPELINES[task]).from_pipe(text_pipe, **text_schedulers)
        pipe.set_progress_bar_config(disable=True)
        entry = (pipe, {slot: _get_attribute(pipe, slot) for slot in recipe.scheduler_slots})
        self._pipelines[key] = entry
        while len(self._pipelines) > self.options.max_pipelines:
            self._pipelines.popitem(last=False)  # its components stay while another pipeline uses them
        return entry

    def _place(self, pipe: Any, offload: str) -> None:
        if offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        for wanted, method, option in ((self.options.vae_tiling, "enable_tiling", "--vae-tiling"),
                                       (self.options.vae_slicing, "enable_slicing", "--vae-slicing")):
            if wanted:
                try:
                    getattr(pipe.vae, method)()
                except (AttributeError, NotImplementedError):  # no VAE (Stable Cascade), or SVD's temporal decoder
                    raise InvalidRequest(f"{option}: this recipe's pipeline has no VAE that decodes in parts "
                                         "(video recipes: use --decode-chunk-size)") from None


_TASK_PIPELINES = {"img2img": "AutoPipelineForImage2Image", "inpaint": "AutoPipelineForInpainting"}


@contextmanager
def _nan_guard() -> Iterator[None]:
    """Fail a call whose images held NaN or infinite values, instead of returning black images.

    diffusers turns such values into pixels with numpy's cast, which only warns ("invalid value encountered in
    cast"); that warning is the one sign left once the images are PIL images.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield
    for warning in caught:  # recording catches every warning: pass on the others (the --fast notices among them)
        if not issubclass(warning.category, RuntimeWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if any(issubclass(w.category, RuntimeWarning) and "invalid value encountered" in str(w.message) for w in caught):
        raise InvalidOutput("the model produced NaN or infinite values (a half-precision overflow, or a broken "
                            "LoRA or model file); nothing was saved")


class _Progress:
    """Report progress and honour cancellation after every scheduler step, across all of a pipeline's stages.

    Hooking the schedulers rather than a pipeline callback works for every diffusers pipeline, including
    those without `callback_on_step_end` (DiT) and two-stage ones (Stable Cascade). A second-order scheduler
    (Heun) calls step() twice per step, so each call counts 1/order of a step.
    """

    def __init__(self, total: int, on_step: ProgressFn | None, cancel: threading.Event | None,
                 previewer: Any = None, on_preview: PreviewFn | None = None) -> None:
        self.total, self.on_step, self.cancel = total, on_step, cancel
        self.previewer, self.on_preview = previewer, on_preview
        self.done = 0.0
        self._last_preview = time.monotonic()  # the first one after PREVIEW_INTERVAL_S: a quick call makes none

    def observe(self, scheduler: Any) -> None:
        step = scheduler.step
        share = 1.0 / getattr(scheduler, "order", 1)

        # wraps() keeps step's signature visible: pipelines inspect it to decide whether to pass `generator`.
        @functools.wraps(step)
        def observed_step(*args: Any, **kwargs: Any) -> Any:
            result = step(*args, **kwargs)
            self.done += share
            if self.on_step is not None:
                self.on_step(min(math.ceil(self.done - 1e-9), self.total), self.total)
            self._preview(result)
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("generation was cancelled")
            return result

        scheduler.step = observed_step

    def _preview(self, result: Any) -> None:
        """Preview the step's prediction of the final latents (x0 where the scheduler gives it), at most every
        PREVIEW_INTERVAL_S: a one-step image, whose result comes as soon as a preview would, costs nothing."""
        if self.on_preview is None or self.previewer is None:
            return
        now = time.monotonic()
        if now - self._last_preview < PREVIEW_INTERVAL_S:
            return
        outputs = result if isinstance(result, tuple) else (getattr(result, "prev_sample", None),
                                                            getattr(result, "pred_original_sample", None))
        latents = next((tensor for tensor in reversed(outputs[:2]) if tensor is not None), None)
        if self.previewer.accepts(latents):
            self._last_preview = now
            step = min(math.ceil(self.done - 1e-9), self.total)
            self.on_preview(step, self.total, self.previewer.image(latents))


def _get_attribute(pipe: Any, path: str) -> Any:
    """A dotted attribute ("prior.scheduler"): two-stage pipelines keep a scheduler per stage."""
    return functools.reduce(getattr, path.split("."), pipe)


def _set_attribute(pipe: Any, path: str, value: Any) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_get_attribute(pipe, owner) if owner else pipe, name, value)


class _Context:
    """The BuildContext a recipe assembles its pipeline from."""

    # The request option that replaces a role's model, for the roles a user may replace.
    _OVERRIDES = {"base": "model", "controlnet": "controlnet"}

    def __init__(self, store: ComponentStore, recipe: Recipe, request: GenerationRequest,
                 precision: Callable[[str], Precision]):
        self.store, self.recipe, self.request, self._precision = store, recipe, request, precision

    def model(self, role: str) -> ModelRef | LocalModel:
        published = self.recipe.models[role]
        override = getattr(self.request, self._OVERRIDES.get(role, ""), None)
        if not override:
            return published
        given = parse_model_argument(override, allow_pickle=self.store.allow_pickle)
        # A hub id replacing a ControlNet is a model repo like the one it replaces, not a pipeline.
        if isinstance(given, ModelRef) and isinstance(published, ModelRef):
            return replace(given, kind=published.kind)
        return given

    def folder(self, role: str, filename: str | None = None) -> Path:
        return self.store.folder(self.model(role), self._precision(role), filename=filename)

    def pipeline(self, role: str = "base", *, pipeline_class: type | None = None, without: tuple[str, ...] = (),
                 **replace: Any) -> Any:
        model = self.model(role)
        if isinstance(model, LocalModel) and model.is_single_file:
            return self._single_file_pipeline(model, role, replace, pipeline_class)
        folder = self.folder(role)
        cls = pipeline_class or _pipeline_class(folder)
        _check_fits(cls, folder, self.recipe.name, without)
        parts = self.store.pipeline_components(folder, self._precision(role), skip={*replace, *without})
        accepted = inspect.signature(cls.__init__).parameters
        # Flags of the folder's own pipeline (requires_safety_checker) mean nothing to another pipeline class.
        return cls(**{name: part for name, part in parts.items() if name in accepted}, **replace)

    def component(self, role: str, class_name: str, *, subfolder: str | None = None,
                  library: str = "diffusers") -> Any:
        return self.store.component(self.folder(role), subfolder, library, class_name, self._precision(role))

    def model_from_file(self, role: str, *, config_role: str = "base", class_name: str = "UNet2DConditionModel",
                        subfolder: str | None = "unet") -> Any:
        filename = self.recipe.models[role].file_for(self.request.num_inference_steps)
        weights = self.folder(role, filename) / filename
        return self.store.model_from_file(weights, self.folder(config_role), self._precision(role),
                                          class_name=class_name, subfolder=subfolder)

    def _single_file_pipeline(self, model: LocalModel, role: str, replace: dict[str, Any],
                              pipeline_class: type | None) -> Any:
        """A civitai-style checkpoint: its weights, with the architecture configs of the recipe's own model,
        assembled into the recipe's pipeline class (a ControlNet or AnimateDiff pipeline around the checkpoint)."""
        published = self.recipe.models[role]
        try:
            precision = self._precision(role)
            config = locate(published, variant=precision.variant)
        except ModelNotFound as error:
            raise ModelNotFound(
                f"{model.path} is a single-file checkpoint; reading it needs the configs of {published.name}, "
                f"which are not available: {error}"
            ) from None
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        cls = pipeline_class or _pipeline_class(config)
        if not hasattr(cls, "from_single_file"):
            raise InvalidRequest(f"recipe {self.recipe.name} cannot read a single-file checkpoint ({model.path}); "
                                 "give it a diffusers model folder or hub id")
        try:
            pipe = cls.from_single_file(
                str(model.path), config=str(config), torch_dtype=precision.torch_dtype(), **replace
            )
        except (SingleFileComponentError, OSError, ValueError) as error:
            raise ModelNotFound(f"{model.path} is not a {published.name} checkpoint that can be read: "
                                f"{str(error).splitlines()[0]}") from None
        # diffusers leaves a weight the file lacks on the meta device, which would fail later in pipe.to().
        missing = [f"{name}.{key}" for name, part in pipe.components.items() if hasattr(part, "named_parameters")
                   for key, tensor in part.named_parameters() if tensor.is_meta]
        if missing:
            raise ModelNotFound(f"{model.path} is not a complete {published.name} checkpoint: it has no "
                                f"{', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}")
        return pipe


def _check_fits(cls: type, folder: Path, recipe: str, without: tuple[str, ...]) -> None:
    """Refuse, before loading any weights, a model folder whose components the recipe's pipeline cannot take."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    accepted = inspect.signature(cls.__init__).parameters
    foreign = [name for name, value in index.items()
               if isinstance(value, list) and value[0] and name not in accepted and name not in without]
    if foreign:
        raise InvalidRequest(f"{folder} holds a {index.get('_class_name', 'pipeline')} (with {', '.join(foreign)}), "
                             f"which recipe {recipe} cannot use: choose the recipe that matches the model (--recipe)")


def _pipeline_class(folder: Path) -> type:
    import json

    import diffusers

    class_name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    return getattr(diffusers, class_name)
