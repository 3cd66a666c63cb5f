"""The `imagegen` command. Parsing and --help import neither torch nor diffusers."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from imagegen.errors import ImagegenError, InvalidRequest, Notice, OutputError
from imagegen.options import OPTIONS, Option
from imagegen.outputs.formats import (
    IMAGE_SUFFIXES,
    OUTPUT_SUFFIXES,
    suffix_for,
)
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest
from imagegen.version import __version__

ATTENTION_HELP = ("torch's attention kernel (auto: torch picks per call, as the reference code does); on a GPU flash "
                  "or cudnn (half precision), efficient, or math; a call the kernel cannot serve fails with its reason")


def build_parser() -> argparse.ArgumentParser:
    from imagegen import settings
    from imagegen.engine import OFFLOAD_MODES
    from imagegen.models.devices import DEVICES, DTYPES, SDPA_BACKENDS

    parser = argparse.ArgumentParser(prog="imagegen", description="Fast diffusion image generation.")
    parser.add_argument("--version", action="version", version=f"imagegen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate images from a prompt",
                              description="Generate images; options left out take the recipe's defaults.")
    gen.add_argument("prompt", nargs="?", help=f"{OPTIONS['prompt'].help} (may be left out with --from)")
    add_request_options(gen)
    gen.add_argument("--save-control", action="store_true", help="also save the control (edge) image beside the result")
    gen.add_argument("--preview", type=Path, metavar="FILE",
                     help="keep FILE (.png, .jpg, .webp) rewritten with a live preview of the first image while it "
                          "denoises (latent recipes); the result is the same with or without it")
    gen.add_argument("-o", "--output", type=Path, help="output file, or folder (default ./outputs)")
    gen.add_argument("--from", dest="from_image", type=Path,
                     help="start from the parameters stored in this image; other options override them")
    gen.add_argument("--device", choices=DEVICES, default="auto")
    gen.add_argument("--dtype", choices=DTYPES, default="auto")
    gen.add_argument("--offload", choices=OFFLOAD_MODES, default="auto",
                     help="CPU offload on a GPU (auto: as the recipe's reference code does)")
    gen.add_argument("--attention", choices=list(SDPA_BACKENDS), default="auto", help=ATTENTION_HELP)
    gen.add_argument("--threads", type=int, metavar="N", help="torch's CPU threads (default: one per core)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in tiles: large images in less memory")
    gen.add_argument("--vae-slicing", action="store_true", help="decode one image at a time")
    gen.add_argument("--allow-pickle", action="store_true",
                     help="allow .ckpt/.bin/.pt weights, which can run code when loaded")
    gen.add_argument("--grid", action="store_true", help="also save the images tiled into one grid image")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=_generate)

    train = commands.add_parser("train-digits", help="train the built-in digits model from scratch (CPU)",
                                description="Rebuild the built-in digits DiT from scikit-learn's digits; "
                                            "use the result with --recipe digits --model DIR.")
    train.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    train.add_argument("--minutes", type=float, default=15.0, help="wall-time budget (default 15)")
    train.add_argument("--seed", type=int, default=0, help="seed of the shipped model: 0")
    train.add_argument("--max-steps", type=int, default=1500,
                       help="optimiser steps (default 1500, the shipped model's; more steps copy training digits)")
    train.set_defaults(run=_train_digits)

    srv = commands.add_parser("serve", help="HTTP service: job queue, native, OpenAI and A1111 APIs (needs .[server])",
                              description="Serve the engine over HTTP; jobs persist in --data-dir.")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: needs an API key)")
    srv.add_argument("--port", type=int, default=7860, help="port (7860, as A1111)")
    srv.add_argument("--data-dir", type=Path, default=Path("imagegen-data"), help="jobs database and images")
    srv.add_argument("--api-key", help="require this key (Bearer token or basic-auth password); visible in `ps`: "
                                       "prefer $IMAGEGEN_API_KEY or --api-key-file")
    srv.add_argument("--api-key-file", type=Path, metavar="PATH",
                     help="read keys from this file: a bare KEY line is the operator's (sees every job), NAME:KEY "
                          "lines are users' keys (each sees and cancels only its own jobs)")
    srv.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME",
                     help="a host name this server answers to besides its loopback names, when it has no key "
                          "(with --host 0.0.0.0 --insecure: the names LAN clients use); repeatable")
    srv.add_argument("--insecure", action="store_true", help="allow a non-loopback address without an API key")
    srv.add_argument("--max-queue", type=int, default=100, help="queued jobs before requests get 429 (100)")
    srv.add_argument("--max-batch", type=int, default=4, help="images of compatible jobs run in one call (4)")
    srv.add_argument("--models-dir", type=Path, help="folder whose models requests may name (besides hub ids)")
    srv.add_argument("--device", choices=DEVICES, default="auto")
    srv.add_argument("--dtype", choices=DTYPES, default="auto")
    srv.add_argument("--offload", choices=OFFLOAD_MODES, default="auto")
    srv.add_argument("--attention", choices=list(SDPA_BACKENDS), default="auto", help=ATTENTION_HELP)
    srv.add_argument("--threads", type=int, metavar="N",
                     help=f"torch's CPU threads (default here: {settings.server_threads()}, a core left to the HTTP "
                          "side; with --cluster: --worker-cpus)")
    srv.add_argument("--repair", action="store_true",
                     help="move a damaged job store aside and rebuild the finished jobs from the result files, "
                          "then serve")
    srv.add_argument("--webhook-allow", action="append", default=[], metavar="HOST",
                     help="a host name, IP address or network (CIDR) that job webhooks may call; repeatable "
                          "(none: jobs cannot name webhooks)")
    srv.add_argument("--warm", action="append", default=[], metavar="RECIPE[:FAST]",
                     help="load RECIPE (with the `fast` methods FAST, e.g. sdxl-turbo:all,compile) and make one image "
                          "before /ready says yes, so the first job does not pay the load or the compile; repeatable")
    srv.add_argument("--db", metavar="URL", default=os.environ.get("IMAGEGEN_DB") or None,
                     help="the job store: a postgresql:// URL (needs .[cluster]; default $IMAGEGEN_DB, which keeps a "
                          "password out of `ps`), else SQLite in --data-dir")
    srv.add_argument("--results-in-db", action="store_true",
                     help="keep result files in the PostgreSQL store (for nodes without a shared --data-dir)")
    cluster = srv.add_argument_group("cluster (Ray Serve; needs .[cluster] and a PostgreSQL --db)")
    cluster.add_argument("--cluster", action="store_true",
                         help="serve with Ray Serve: the API and engine replicas (one per GPU on GPU nodes) on a "
                              "local Ray head on 127.0.0.1, or the cluster at --ray-address")
    cluster.add_argument("--replicas", type=int, default=1, metavar="N", help="engine replicas (1)")
    cluster.add_argument("--autoscale", metavar="MIN:MAX",
                         help="engine replicas between MIN and MAX, following the queue's depth")
    cluster.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (e.g. 10.0.0.5:6379)")
    cluster.add_argument("--worker-cpus", type=float, default=1.0, metavar="N",
                         help="CPUs each engine replica reserves (1)")
    cluster.add_argument("--worker-gpus", type=float, metavar="N",
                         help="GPUs each engine replica reserves (default: 1 where the cluster has GPUs)")
    cluster.add_argument("--print-config", action="store_true",
                         help="print this command line as a Serve config (YAML) for `serve deploy`, and exit")
    srv.set_defaults(run=_serve)

    rec = commands.add_parser("recipes", help="list the recipes, their models and defaults")
    rec.set_defaults(run=_recipes)
    _add_pull_parser(commands)

    info = commands.add_parser("info", help="print the generation parameters stored in an image")
    info.add_argument("image", type=Path)
    info.set_defaults(run=_info)
    return parser


def add_request_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of the option table, under its group's heading, with the recipes' defaults in its help."""
    from imagegen.options import DEFAULT_RECIPE
    from imagegen.recipes import RECIPES

    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS.values():
        if option.cli_flag is None:
            continue
        group = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        arguments: dict[str, Any] = {"dest": option.name, "help": option.help + _default_text(option, RECIPES)}
        if option.kind is bool:
            arguments.update(action="store_true", default=None)
        elif option.kind is LoraSpec:
            arguments.update(action="append", metavar=option.metavar)
        else:
            arguments.update(type=option.kind, metavar=option.metavar, choices=option.allowed())
            if option.flag_alone is not None:
                arguments.update(nargs="?", const=option.flag_alone)
        if option.name == "recipe":
            arguments.update(choices=list(RECIPES), help=f"{option.help} (default {DEFAULT_RECIPE})")
        group.add_argument(option.cli_flag, **arguments)


def _default_text(option: Option, recipes: dict[str, Any]) -> str:
    """The default as the help shows it: the recipes' own values when there are one or two, else where to look."""
    if not option.per_recipe:
        return ""
    by_value: dict[Any, list[str]] = {}
    for recipe in recipes.values():
        value = getattr(recipe.defaults, option.name)
        if value is not None:
            by_value.setdefault(value, []).append(recipe.name)
    if not by_value or len(by_value) > 2:
        return " (default: the recipe's, see `imagegen recipes`)"
    ordered = sorted(by_value.items(), key=lambda item: -len(item[1]))
    parts = [(repr(value) if isinstance(value, str) else f"{value:g}")
             + ("" if i == 0 and len(ordered) > 1 and len(names) > 3 else f" for {', '.join(names)}")
             for i, (value, names) in enumerate(ordered)]
    return f" (default {'; '.join(parts)})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except ImagegenError as error:
        print(f"imagegen: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("imagegen: interrupted", file=sys.stderr)
        return 130


def _request_from_args(args: argparse.Namespace) -> GenerationRequest:
    from imagegen.options import DEFAULT_RECIPE

    if args.from_image is not None:
        from imagegen.outputs.metadata import read_parameters
        from imagegen.parameters import request_from_infotext

        text = read_parameters(args.from_image)
        if text is None:
            raise InvalidRequest(f"{args.from_image} carries no generation parameters")
        base = request_from_infotext(text)
    else:
        from imagegen.recipes import get_recipe

        recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
        if args.prompt is None and recipe.takes_prompt:
            raise InvalidRequest("a prompt is needed (or --from IMAGE)")
        base = GenerationRequest(prompt=args.prompt or "", recipe=recipe.name)
    given = {f.name: getattr(args, f.name) for f in fields(GenerationRequest)
             if getattr(args, f.name, None) is not None}
    if args.loras:
        from imagegen.prompts.lora_tags import LoraSpec

        given["loras"] = (*base.loras, *(LoraSpec.parse(text) for text in args.loras))
    suffix_format = OUTPUT_SUFFIXES.get(args.output.suffix.lower()) if args.output is not None else None
    if suffix_format and args.output_format not in (None, suffix_format):
        raise InvalidRequest(f"--format {args.output_format} contradicts the output file name {args.output}")
    if suffix_format:
        given["output_format"] = suffix_format
    return replace(base, **given)


def _generate(args: argparse.Namespace) -> int:
    from imagegen import settings
    from imagegen.engine import Engine, EngineOptions
    from imagegen.recipes import get_recipe

    request = _request_from_args(args)
    recipe = get_recipe(request.recipe)
    request = request.resolve(recipe)  # every check, the recipe's prompt check included, before anything loads
    if args.grid and recipe.video:
        raise InvalidRequest("--grid tiles images; a video recipe writes videos")
    if args.preview is not None and args.preview.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidRequest(f"--preview: name a {', '.join(IMAGE_SUFFIXES)} file, not {args.preview}")
    if args.save_control and not recipe.control:
        raise InvalidRequest(f"--save-control: recipe {recipe.name} has no control image")
    target = args.output or settings.default_output_dir()
    check_output_target(target)
    engine = Engine(EngineOptions(device=args.device, dtype=args.dtype, offload=args.offload,
                                  vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing,
                                  allow_pickle=args.allow_pickle, attention=args.attention, threads=args.threads))
    with _ProgressBar(enabled=not args.quiet) as bar:
        on_preview = None if args.preview is None else functools.partial(_write_preview, args.preview)
        images = engine.generate(request, on_step=bar.update, on_preview=on_preview)  # or videos
    paths = output_paths(target, len(images),
                         images[0].request.output_format, [image.seed for image in images])
    for image, path in zip(images, paths):
        print(image.save(path))
    if args.save_control:
        from imagegen.pipelines.control import control_image

        resolved = images[0].request
        edges = paths[0].with_name(f"{paths[0].stem}-control{paths[0].suffix}")
        # Without the generation's parameters: `info` or `--from` on it must not take it for the result.
        control_image(resolved).resize((resolved.width, resolved.height)).save(edges)
        print(edges)
    if args.grid:
        from imagegen.outputs.grid import make_grid

        first = images[0]
        grid = replace(first, image=make_grid([image.image for image in images]))
        print(grid.save(paths[0].with_name(f"{paths[0].stem}-grid{paths[0].suffix}")))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise InvalidRequest("serve needs the server extra: pip install 'imagegen[server]'")
    from imagegen.server.main import api_keys_from, serve
    from imagegen.server.service import ServerSettings

    for name, low in (("max_queue", 1), ("max_batch", 1), ("port", 1)):
        if getattr(args, name) < low:
            raise InvalidRequest(f"--{name.replace('_', '-')} must be at least {low}")
    if args.results_in_db and not args.db:
        raise InvalidRequest("--results-in-db needs a PostgreSQL job store: --db postgresql://...")
    if args.repair and args.db:
        raise InvalidRequest("--repair rebuilds the SQLite job store; a PostgreSQL one is repaired with its own tools")
    operator_key, user_keys = api_keys_from(args.api_key, args.api_key_file)
    from imagegen import settings as environment

    threads = args.threads if args.threads is not None or args.cluster else environment.server_threads()
    settings = ServerSettings(data_dir=args.data_dir, host=args.host, port=args.port, api_key=operator_key,
                         user_keys=user_keys,
                         insecure=args.insecure, max_queue=args.max_queue, max_batch=args.max_batch,
                         models_dir=args.models_dir, device=args.device, dtype=args.dtype, offload=args.offload,
                         attention=args.attention, warm=tuple(args.warm), threads=threads,
                         webhook_allow=tuple(args.webhook_allow), repair=args.repair,
                         allowed_hosts=tuple(args.allowed_hosts), db=args.db, results_in_db=args.results_in_db)
    if not (args.cluster or args.print_config):
        serve(settings)
        return 0
    from imagegen.server.cluster import ClusterOptions, serve_cluster, serve_config

    options = ClusterOptions(replicas=args.replicas, ray_address=args.ray_address, worker_cpus=args.worker_cpus,
                             worker_gpus=args.worker_gpus,
                             autoscale=ClusterOptions.parse_autoscale(args.autoscale) if args.autoscale else None)
    if args.print_config:
        print(serve_config(settings, options), end="")
    else:
        serve_cluster(settings, options)
    return 0


def _train_digits(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise InvalidRequest("train-digits needs scikit-learn for its data set: pip install 'imagegen[train]'")
    from imagegen.builtin.train_digits import train

    summary = train(args.out, minutes=args.minutes, seed=args.seed, max_steps=args.max_steps)
    print(args.out)
    print(", ".join(f"{key}: {value}" for key, value in summary.items()), file=sys.stderr)
    return 0


def check_output_target(target: Path) -> None:
    """Refuse an output we could not honour, before any model is loaded."""
    if target.suffix.lower() in OUTPUT_SUFFIXES:
        return
    if target.suffix and not target.exists():
        raise InvalidRequest(f"cannot write {target.suffix} files; name a .png, .jpg, .webp, .mp4 or .gif file, "
                             "or a folder")
    if target.exists() and not target.is_dir():
        raise InvalidRequest(f"{target} exists and is not a folder")


def output_paths(target: Path, count: int, output_format: str, seeds: list[int]) -> list[Path]:
    """Where each result goes: a file path as given (numbered when several), or new numbered files in a folder
    (a video's frames format: new numbered folders)."""
    suffix = suffix_for(output_format)
    if target.suffix.lower() in OUTPUT_SUFFIXES:
        if count == 1:
            return [target]
        return [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    check_output_target(target)
    taken = [int(p.name[:5]) for p in target.glob("[0-9][0-9][0-9][0-9][0-9]-*")] if target.is_dir() else []
    first = max(taken, default=-1) + 1
    return [target / f"{first + i:05d}-{seed}{suffix}" for i, seed in enumerate(seeds)]


def _add_pull_parser(commands: argparse._SubParsersAction) -> None:
    from imagegen.models.devices import DEVICES, DTYPES
    from imagegen.models.sources import HUBS

    pull = commands.add_parser(
        "pull", help="download the files a recipe loads on this machine, to run it offline later",
        description="Download exactly the files RECIPE loads: the half-precision files on a GPU, full precision on a "
                    "CPU (--dtype float16 fetches a GPU's files from any machine). Honours HF_ENDPOINT, HF_HUB_CACHE "
                    "and HF_HOME; an interrupted download resumes when run again.")
    pull.add_argument("recipe", metavar="RECIPE", help="the recipe whose models to download (see `imagegen recipes`)")
    pull.add_argument("--source", choices=list(HUBS), default="hf",
                      help="hf: the Hugging Face hub (default); modelscope: ModelScope (needs imagegen[modelscope])")
    pull.add_argument("--steps", type=int, metavar="N",
                      help="step-distilled recipes (sdxl-lightning...): the file for N steps (default: the recipe's)")
    pull.add_argument("--device", choices=DEVICES, default="auto", help="the device to download for (auto: this one)")
    pull.add_argument("--fast", action="store_true",
                      help="also the models that `generate --fast` loads (the tiny VAE of the SD 1.5 and SDXL recipes)")
    pull.add_argument("--dtype", choices=DTYPES, default="auto",
                      help="the precision to download for (auto: the one the device runs the recipe in)")
    pull.set_defaults(run=_pull)


def _pull(args: argparse.Namespace) -> int:

    from imagegen.engine import Engine, EngineOptions
    from imagegen.models.pull import needed_models, pull
    from imagegen.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    steps = recipe.defaults.num_inference_steps if args.steps is None else args.steps
    if recipe.allowed_steps and steps not in recipe.allowed_steps:
        raise InvalidRequest(f"--steps: recipe {recipe.name} has files for {', '.join(map(str, recipe.allowed_steps))} "
                             f"steps only, got {steps}")
    engine = Engine(EngineOptions(device=args.device, dtype=args.dtype))
    models = needed_models(recipe, functools.partial(engine.precision, recipe), steps, fast=args.fast)
    if not models:
        print(f"recipe {recipe.name} ships with imagegen: nothing to pull")
        return 0
    pulled = pull(models, args.source)
    for model in pulled:
        print(f"{model.plan.ref.name}: {len(model.plan.files)} files, {_size_text(model.plan.size)} in {model.folder}")
    print(f"total: {_size_text(sum(model.plan.size for model in pulled))}")
    return 0


def _size_text(size: int) -> str:
    """Bytes as people read them, in powers of 1000 as the hubs show sizes: 812 B, 3.4 MB, 6.9 GB."""
    power = min((len(str(size)) - 1) // 3, 3)
    return f"{size / 1000 ** power:.{1 if power else 0}f} {('B', 'kB', 'MB', 'GB')[power]}"


def _recipes(args: argparse.Namespace) -> int:
    """The table on stdout; LOCAL says whether the files this machine's precision loads are all on disk."""
    from imagegen.engine import Engine
    from imagegen.recipes import RECIPES

    engine = Engine()  # this machine's device and precision, as `generate` chooses them
    rows = [("RECIPE", "STEPS", "CFG", "SIZE", "LOCAL", "MODELS")]
    missing = []
    for recipe in RECIPES.values():
        d = recipe.defaults
        ready = engine.is_ready(recipe)
        missing += [] if ready else [recipe.name]
        rows.append((recipe.name, str(d.num_inference_steps), f"{d.guidance_scale:g}", f"{d.width}x{d.height}",
                     "yes" if ready else "no", " + ".join(r.name for r in recipe.models.values())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if missing:
        print(f"LOCAL no: files this machine loads are missing; get them with `imagegen pull NAME` "
              f"(e.g. imagegen pull {missing[0]})", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from imagegen.outputs.metadata import read_parameters

    text = read_parameters(args.image)
    if text is None:
        print(f"imagegen: {args.image} carries no generation parameters", file=sys.stderr)
        return 1
    print(text)
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Our own warnings as one line, like our errors; a library's keep Python's format."""
    if issubclass(category, Notice):
        print(f"imagegen: warning: {message}", file=sys.stderr)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning


def _write_preview(path: Path, step: int, steps: int, image: Any) -> None:
    """Replace `path` at once (write beside it, then rename), so that a viewer never reads half a file."""
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        image.save(partial)
        os.replace(partial, path)
    except OSError as error:
        raise OutputError(f"--preview: cannot write {path}: {error.strerror or error}") from None


class _ProgressBar:
    """A step counter on stderr, so stdout carries only the result paths."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr is not None
        self._bar = None

    def __enter__(self) -> _ProgressBar:
        return self

    def update(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", file=sys.stderr)
        self._bar.update(step - self._bar.n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    sys.exit(main())
