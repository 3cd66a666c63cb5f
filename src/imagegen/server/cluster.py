"""`imagegen serve --cluster`: the API and the engine workers as Ray Serve deployments, one job store in PostgreSQL.

Jobs never travel through Ray calls (a dying replica would lose the calls in flight, and Serve's routing sent
every job of a loaded recipe to one replica): the API stores them, and each engine replica runs the server's own
worker loop against the store, claiming what it can batch, preferring what it holds loaded, its claims leased so
that a dead replica's jobs run again elsewhere (store/sql.py). Ray places the replicas (one per GPU on GPU machines)
across the cluster's nodes and restarts those that die; results go to a shared --data-dir or into the store.

`build_app` is the application builder both `imagegen serve --cluster` and `serve deploy` (of the YAML that
`--print-config` prints) use. Nothing here imports ray or psycopg at module level: only cluster mode does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.server.service import ServerSettings

log = logging.getLogger("imagegen.server")
APP_NAME = "imagegen"
OBJECT_STORE_BYTES = 80 * 2**20  # Ray's minimum is 75 MiB: jobs and images never pass through it
SECRETS = ("db", "api_key", "user_keys")  # kept out of a printed config: the nodes read them from the environment
API_REQUESTS_IN_FLIGHT = 4096  # streams and waiting calls included
QUEUED_PER_REPLICA = 4  # autoscaling's target: this many queued jobs per engine replica (one batch each)


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int = 1  # engine replicas (with autoscale: where it starts)
    autoscale: tuple[int, int] | None = None  # (min, max) engine replicas, following the queue's depth
    ray_address: str | None = None  # join this Ray cluster; None: start a local head on 127.0.0.1
    worker_cpus: float = 1.0  # CPUs each engine replica reserves
    worker_gpus: float | None = None  # GPUs each reserves; None: 1 on a cluster with GPUs, else 0

    @staticmethod
    def parse_autoscale(text: str) -> tuple[int, int]:
        low, colon, high = text.partition(":")
        if not (colon and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
            raise InvalidRequest(f"--autoscale MIN:MAX, with 1 <= MIN <= MAX, got {text!r}")
        return int(low), int(high)


def check_cluster(settings: ServerSettings, options: ClusterOptions) -> None:
    """What can be refused before Ray starts, each in one line."""
    import importlib.util

    missing = [name for name in ("ray", "psycopg") if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidRequest(f"--cluster needs {' and '.join(missing)}: pip install 'imagegen[cluster]'")
    if not settings.db or not settings.db.startswith(("postgresql://", "postgres://")):
        raise InvalidRequest("--cluster needs a PostgreSQL job store that every node reaches: --db postgresql://... "
                             "(or $IMAGEGEN_DB)")
    # Serve's replicas listen on every interface for their calls to each other (hard-coded in Ray 2.60), checked by
    # Ray's token authentication only: it must stay on (Ray's default for a new cluster; RAY_AUTH_MODE=disabled
    # turns it off).
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        raise InvalidRequest("RAY_AUTH_MODE=disabled: Serve's replicas listen on every network interface, and only "
                             "Ray's token authentication guards them; unset it (or set RAY_AUTH_MODE=token)")
    if options.ray_address and not _loopback_address(options.ray_address) and \
            os.environ.get("RAY_AUTH_MODE") != "token":
        raise InvalidRequest(f"joining the Ray cluster at {options.ray_address} over the network needs Ray's token "
                             "authentication: set RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN on every node")
    if options.replicas < 1:
        raise InvalidRequest("--replicas must be at least 1")


def serve_cluster(settings: ServerSettings, options: ClusterOptions) -> None:
    """Start (or join) Ray, deploy the API and the engine replicas, and serve until SIGINT or SIGTERM."""
    import signal
    import threading

    from imagegen.server.main import check_exposure, log_to_stderr
    from imagegen.server.store import open_store

    check_exposure(settings)
    check_cluster(settings, options)
    log_to_stderr()

    open_store(settings.db, settings.data_dir).close()  # unreachable or refused: one line now, not in every replica
    ray = start_ray(options, settings.data_dir)
    from ray import serve

    try:
        gpus = _worker_gpus(options, ray.cluster_resources())
        check_resources(options, gpus, ray.cluster_resources())
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(application_args(settings, options, gpus)), name=APP_NAME, route_prefix="/")
        log.info("imagegen cluster serving http://%s:%d/ : %s engine replica(s), job store %s", settings.host,
                 settings.port, f"{options.autoscale[0]}-{options.autoscale[1]}" if options.autoscale
                 else options.replicas, _redacted(settings.db))
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


def start_ray(options: ClusterOptions, data_dir: Path) -> Any:
    """Join the Ray cluster at `ray_address`, or start a local head that listens on 127.0.0.1 only, in a temp
    folder of its own (not the shared /tmp/ray), with a small object store."""
    if options.ray_address is None:
        # Read when ray is imported: without it, Ray swaps 127.0.0.1 for a routable address and listens on every
        # interface.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if options.ray_address is not None:
        ray.init(address=options.ray_address, logging_level=logging.WARNING)
        return ray
    temp = Path(os.environ.get("IMAGEGEN_RAY_TEMP") or f"/tmp/imagegen-ray-{os.getuid()}")
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=str(temp),
             object_store_memory=OBJECT_STORE_BYTES, logging_level=logging.WARNING,
             num_cpus=os.cpu_count())
    return ray


def check_resources(options: ClusterOptions, gpus: float, resources: dict[str, float]) -> None:
    """Serve waits silently for resources that do not exist: refuse such a request at once, naming what lacks."""
    replicas = options.autoscale[0] if options.autoscale else options.replicas
    wanted = {"CPU": replicas * options.worker_cpus, "GPU": replicas * gpus}
    for name, amount in wanted.items():
        if amount > resources.get(name, 0) + 1e-9:
            raise InvalidRequest(f"{replicas} engine replica(s) ask for {amount:g} {name}(s); the Ray cluster has "
                                 f"{resources.get(name, 0):g} (lower --replicas, --worker-cpus or --worker-gpus, or "
                                 "add nodes)")


def _worker_gpus(options: ClusterOptions, resources: dict[str, float]) -> float:
    if options.worker_gpus is not None:
        return options.worker_gpus
    return 1.0 if resources.get("GPU", 0) >= 1 else 0.0


def application_args(settings: ServerSettings, options: ClusterOptions, gpus: float) -> dict[str, Any]:
    """build_app's arguments as plain values (the `args` of a Serve config file)."""
    values = {field.name: getattr(settings, field.name) for field in fields(ServerSettings)}
    values.update(options={**dataclasses.asdict(options), "worker_gpus": gpus})
    return _plain(values)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder: the API deployment bound to the engine replicas' deployment."""
    from ray import serve

    options = ClusterOptions(**{**args["options"], "autoscale": tuple(args["options"]["autoscale"])
                                if args["options"].get("autoscale") else None})
    settings = _settings(args)
    threads = settings.threads or max(1, int(options.worker_cpus))
    engine_settings = replace(settings, threads=threads)
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscale:
        scaling = {"autoscaling_config": {
            "min_replicas": options.autoscale[0], "max_replicas": options.autoscale[1],
            "initial_replicas": min(max(options.replicas, options.autoscale[0]), options.autoscale[1]),
            "policy": {"policy_function": f"{__name__}:queue_depth_policy"}}}
    engines = serve.deployment(EngineReplica, name="engine", max_ongoing_requests=1, health_check_period_s=5,
                               ray_actor_options={"num_cpus": options.worker_cpus,
                                                  "num_gpus": options.worker_gpus or 0}, **scaling)
    # Serve lets 5 requests at a time into a replica by default; a synchronous OpenAI or A1111 call holds its place
    # until its job ends, so 5 would be all the jobs in flight: the app bounds its work itself (the queue's 429).
    api = serve.deployment(serve.ingress()(ApiReplica), name="api", ray_actor_options={"num_cpus": 0},
                           max_ongoing_requests=API_REQUESTS_IN_FLIGHT)
    return api.bind(replace(settings, remote_workers=True), engines.bind(engine_settings))


def _settings(args: dict[str, Any]) -> ServerSettings:
    values = {key: value for key, value in args.items() if key != "options"}
    values["db"] = values.get("db") or os.environ.get("IMAGEGEN_DB")
    values["api_key"] = values.get("api_key") or os.environ.get("IMAGEGEN_API_KEY")
    values["user_keys"] = values.get("user_keys") or ()
    for field in fields(ServerSettings):
        if field.name in values and isinstance(values[field.name], list):
            values[field.name] = tuple(tuple(item) if isinstance(item, list) else item
                                       for item in values[field.name])
    for name in ("data_dir", "models_dir"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    return ServerSettings(**values)


def queue_depth_policy(context: Any) -> tuple[int, dict[str, Any]]:
    """Serve's custom autoscaling policy: enough engine replicas for QUEUED_PER_REPLICA queued jobs each, within
    the deployment's bounds. The depth comes from the replicas' `record_autoscaling_stats` (the store's count)."""
    reported = (context.aggregated_metrics or {}).get("queued") or {}
    queued = max(reported.values(), default=0.0)  # every replica reads the same store
    running = context.current_num_replicas
    wanted = max(math.ceil(queued / QUEUED_PER_REPLICA), 1 if running else 0)
    return min(max(wanted, context.capacity_adjusted_min_replicas), context.capacity_adjusted_max_replicas), {}


class EngineReplica:
    """An engine and the server's worker loop against the shared store: no request ever reaches it."""

    def __init__(self, settings: ServerSettings) -> None:
        from imagegen.engine import Engine, EngineOptions
        from imagegen.server.metrics import Metrics
        from imagegen.server.service import warm_requests
        from imagegen.server.store import open_store
        from imagegen.server.worker import Worker

        engine = Engine(EngineOptions(device=settings.device, dtype=settings.dtype, offload=settings.offload,
                                      lora_names_only=True, attention=settings.attention, threads=settings.threads))
        store = open_store(settings.db, settings.data_dir, max_queue=settings.max_queue)
        self.worker = Worker(engine, store, settings.images_dir, Metrics(), max_batch=settings.max_batch,
                             warm=warm_requests(settings.warm), results_in_store=settings.results_in_db,
                             worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        self.grace = settings.shutdown_grace_s
        self.worker.start()

    def check_health(self) -> None:
        """Serve's health check: a replica whose worker loop ended is replaced."""
        if not self.worker.is_alive():
            raise RuntimeError("the engine worker's loop has ended")

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"queued": float(self.worker.store.counts()["queued"])}

    def __del__(self) -> None:
        """Serve's graceful stop: the running call may finish within the grace, else its jobs go back."""
        self.worker.shutdown(self.grace)
        self.worker.store.close()


class ApiReplica:
    """The server's FastAPI app (three APIs, web page, metrics) over the shared store, with no worker of its own."""

    def __init__(self, settings: ServerSettings, engines: Any) -> None:
        from imagegen.engine import Engine, EngineOptions
        from imagegen.server.service import Service

        # Not run here: it tells /v1/recipes which recipes this node holds on disk.
        engine = Engine(EngineOptions(device="cpu", dtype=settings.dtype, lora_names_only=True))
        self.service = Service(settings, engine)
        self.service.courier.start()
        self.engines = engines  # bound so that Serve deploys the engine replicas with this application

    def __serve_build_asgi_app__(self) -> Any:
        from imagegen.server.app import create_app

        return create_app(self.service)


def serve_config(settings: ServerSettings, options: ClusterOptions) -> str:
    """A Serve config (YAML) of this command line, for `serve deploy` on a running cluster."""
    import yaml

    gpus = options.worker_gpus if options.worker_gpus is not None else 0.0
    args = {**application_args(settings, options, gpus), **dict.fromkeys(SECRETS)}  # read on the nodes instead
    config = {"http_options": {"host": settings.host, "port": settings.port},
              "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:build_app",
                                "args": args}]}
    return ("# imagegen serve --cluster, as a Serve config: serve deploy THIS_FILE (on a running Ray cluster).\n"
            "# The database URL and the API key are not written here: each node reads $IMAGEGEN_DB and\n"
            "# $IMAGEGEN_API_KEY. worker_gpus: 1 per engine replica on GPU nodes.\n"
            + yaml.safe_dump(config, sort_keys=False))


def _loopback_address(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def _redacted(url: str) -> str:
    from imagegen.server.store.postgres import redacted

    return redacted(url)
