"""The one thread that owns the device: takes queued jobs in order, batches compatible ones, records results.

Jobs of equal Engine.batch_key that wait next to each other in the queue run as one pipeline call (up to
`max_batch` images); each keeps its own seed, so its images are those it would get alone. A failing call is
retried job by job, so one bad job fails alone; the worker frees memory and goes on. A call's files are encoded,
written, synced and recorded on a second thread while the device runs the next call (one call's results at a
time, so that a slow disk holds the worker back rather than filling the memory). Cancelling one job of a
batch stops the call: that job is cancelled and the others go back to the queue at their place. A stop lets the
running call finish within a grace period, else interrupts it and puts its jobs back: no job is ever lost.
"""

from __future__ import annotations

import gc
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagegen.errors import Cancelled, ImagegenError, StorageFull, StoreUnavailable
from imagegen.outputs.durable import sync_to_disk
from imagegen.request import GenerationRequest
from imagegen.server.arrivals import BATCH_WAIT_S, Arrivals
from imagegen.server.inputs import discard_inputs
from imagegen.server.kept import KeptFiles
from imagegen.server.metrics import Metrics
from imagegen.server.store import LOCAL_WORKER, Job, JobStore
from imagegen.server.store.sql import LEASE_S

log = logging.getLogger("imagegen.server")
PREVIEW_JPEG_QUALITY = 80  # previews are glimpses: a few kB each, sent a few times a second
UNRECORDED = (StorageFull, StoreUnavailable)  # a store that cannot take an outcome now, but will
PROGRESS_INTERVAL_S = 0.25  # how often a worker sharing a store records its steps there (its previews: each)
CLAIM_WINDOW = 32  # how many queued jobs a worker sharing a store looks at for a batch of its loaded recipes


@dataclass
class Progress:
    """A running job's live state, as the APIs show it: the steps of its call (shared by the jobs of a batch)
    and whether this job was asked to stop."""

    done: int = 0
    total: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    preview: bytes | None = None  # a JPEG of the image as the latest preview predicts it (the batch's first job)
    preview_step: int = 0


class Worker(threading.Thread):
    def __init__(self, engine: Any, store: JobStore, images_dir: Path, metrics: Metrics, *, max_batch: int = 4,
                 idle_wait: float = 0.5, warm: tuple[GenerationRequest, ...] = (),
                 on_progress: Callable[[str], None] = lambda job_id: None, arrivals: Arrivals | None = None,
                 worker_id: str = LOCAL_WORKER, results_in_store: bool = False) -> None:
        super().__init__(name="imagegen-worker", daemon=True)
        self.worker_id = worker_id  # the name its claims are held under in the store
        self.results_in_store = results_in_store  # result files go to the store (no folder shared by the nodes)
        self.engine, self.store, self.images_dir, self.metrics = engine, store, images_dir, metrics
        self.max_batch, self.idle_wait = max_batch, idle_wait
        self.warm = warm  # run once before the worker says ready: loads (and with --fast compile, compiles) them
        self.on_progress = on_progress  # a running job's step or preview changed (in memory, not in the store)
        self.arrivals = arrivals  # submissions on their way, which a call with room left waits for a moment
        self.unrecorded: list[tuple[str, Callable[[], None]]] = []  # outcomes the store could not take yet
        self._unrecorded_lock = threading.Lock()  # the results thread adds to it, the worker retries it
        self.kept = KeptFiles()  # the latest result files' bytes, for the APIs that answer them inline
        self.running: dict[str, Progress] = {}  # job id -> live progress, read by the APIs
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._deadline: float | None = None  # time.monotonic() past which a stopping worker interrupts its call
        self._calling: set[str] = set()  # the jobs of the running call
        self._interrupt = threading.Event()  # the running call's: set, it stops at its next step
        self._lock = threading.Lock()  # running, _calling, _recording and _interrupt change together
        self._results = ThreadPoolExecutor(1, thread_name_prefix="imagegen-results")
        self._recording: set[str] = set()  # jobs whose results the results thread has yet to record
        self._last_results: Future | None = None  # the results thread's latest task

    @property
    def stopping(self) -> bool:
        """True once stop() was called: queued jobs wait for the next start."""
        return self._stopping.is_set()

    def stop(self, grace: float | None = None) -> None:
        """Take no new job. The running call may go on for `grace` seconds (None: until it ends); then it stops at
        its next step and its jobs go back to the queue, to run again, with their seeds, at the next start.

        Takes no lock, so that a signal handler may call it.
        """
        if grace is not None:
            deadline = time.monotonic() + grace
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        self._stopping.set()

    def shutdown(self, grace: float | None = None) -> None:
        """stop(grace), and return once the thread has ended."""
        self.stop(grace)
        with self.store.changed:
            self.store.changed.notify_all()
        if self.ident is not None:  # started
            self.join()

    def _warm_up(self, request: GenerationRequest) -> None:
        """One image of `request`, thrown away: its pipeline is loaded, compiled and warm for the first job."""
        started = time.monotonic()
        try:
            self.engine.generate(request)
        except ImagegenError as error:
            log.error("warming %s failed: %s", request.recipe, error)
            return
        log.info("warmed %s%s in %.1f s", request.recipe, f" (fast {request.fast})" if request.fast else "",
                 time.monotonic() - started)

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop at its next step; False if it is not running."""
        with self._lock:
            progress = self.running.get(job_id)
            if progress is None:
                return False
            progress.cancel.set()
            if job_id in self._calling:
                self._interrupt.set()
        return True

    def run(self) -> None:
        if self.store.shared:  # other workers' running jobs are theirs; a dead one's come back as its lease ends
            self.store.on_cancel = self.cancel
            threading.Thread(target=self._renew_leases, name="imagegen-leases", daemon=True).start()
        else:
            requeued = self.store.requeue_interrupted()
            if requeued:
                log.warning("%d interrupted job(s) went back to the queue", requeued)
        for request in self.warm:
            self._warm_up(request)
        self.ready.set()
        while not self._stopping.is_set():
            try:
                if self.unrecorded:  # a full disk: keep what is done, take nothing new until it is written
                    self._record_again()
                    continue
                group = self._next_group()
                if group:
                    self._run_group(group)
                else:
                    self.store.wait_for_work(self.idle_wait)
            except Exception:  # noqa: BLE001 - a database error must not end the server's only worker
                log.exception("the worker's loop failed; it goes on")
                time.sleep(self.idle_wait)
        self._results.shutdown(wait=True)  # the last call's results are recorded before the worker ends

    def _record(self, job_id: str, write: Callable[[], None]) -> None:
        """Write a job's outcome to the store; when the store cannot be written (a full disk) keep the write and try
        it again until it goes through: a job never stays "running" for want of its record."""
        try:
            write()
        except UNRECORDED as error:
            log.error("job %s: its outcome cannot be recorded (%s); the worker retries and takes no new job", job_id,
                      error)
            with self._unrecorded_lock:
                self.unrecorded.append((job_id, write))

    def _record_again(self) -> None:
        self._stopping.wait(self.idle_wait)
        with self._unrecorded_lock:
            pending, self.unrecorded = self.unrecorded, []
        for job_id, write in pending:
            self._record(job_id, write)
        if not self.unrecorded:
            log.info("the store can be written again: %d job outcome(s) recorded", len(pending))

    def _renew_leases(self) -> None:
        while not self._stopping.wait(LEASE_S / 3):
            try:
                self.store.renew(self.worker_id)
            except Exception as error:  # noqa: BLE001 - the store restarts: renew at the next beat
                log.warning("the worker's leases could not be renewed: %s", error)

    def _next_group(self) -> list[Job]:
        """Claim the next group (see _choose); with room left and jobs on their way, wait up to BATCH_WAIT_S for
        them first."""
        deadline = time.monotonic() + BATCH_WAIT_S
        while self.arrivals is not None and self.arrivals.pending and time.monotonic() < deadline:
            group = self._choose(self.store.queued(limit=self.max_batch))
            if not group or sum(job.request.num_images for job in group) >= self.max_batch:
                break
            self.store.wait_for_work(max(0.0, deadline - time.monotonic()))
        return self.store.claim(self._choose, window=CLAIM_WINDOW if self.store.shared else self.max_batch,
                                worker=self.worker_id)

    def _choose(self, waiting: list[Job]) -> list[Job]:
        """The first queued job and the compatible jobs right behind it, up to max_batch images. A worker sharing the
        store starts from the first job whose pipeline it holds loaded, if any is waiting, and takes the compatible
        jobs from anywhere in the window: replicas stay warm and their batches full."""
        if not waiting:
            return []
        if self.store.shared:
            loaded = [job for job in waiting if self._is_loaded(job)]
            first = (loaded or waiting)[0]
            key = self._batch_key(first)
            group, images = [first], first.request.num_images
            for job in waiting:
                if job is not first and key is not None and self._batch_key(job) == key and \
                        images + job.request.num_images <= self.max_batch:
                    group.append(job)
                    images += job.request.num_images
            return sorted(group, key=waiting.index)
        key = self._batch_key(waiting[0])
        group, images = [waiting[0]], waiting[0].request.num_images
        for job in waiting[1:]:
            if key is None or self._batch_key(job) != key or images + job.request.num_images > self.max_batch:
                break
            group.append(job)
            images += job.request.num_images
        return group

    def _batch_key(self, job: Job) -> Any:
        try:
            return self.engine.batch_key(job.request)
        except Exception:  # noqa: BLE001 - e.g. a stored job whose recipe is gone: it runs alone and fails there
            return None

    def _is_loaded(self, job: Job) -> bool:
        try:
            return self.engine.is_loaded(job.request)
        except Exception:  # noqa: BLE001 - as _batch_key
            return False

    def _run_group(self, group: list[Job]) -> None:
        """Run the claimed jobs in one call (a stopping worker puts them back)."""
        if self._stopping.is_set():
            for job in group:
                self.store.requeue(job.id, self.worker_id)
            return
        self._register(group)
        try:
            for job_id in self.store.cancel_requested([job.id for job in group]):  # asked between claim and now
                self.cancel(job_id)
            self._call(group)
        finally:
            with self._lock:
                for job in group:
                    if job.id not in self._recording:  # else the results thread forgets it once recorded
                        self.running.pop(job.id, None)
                self._calling = set()

    def _register(self, group: list[Job]) -> None:
        """Make the jobs cancellable; a job asked to stop before its call starts stops at once."""
        with self._lock:
            live = [self.running.setdefault(job.id, Progress()) for job in group]
            self._calling = {job.id for job in group}
            self._interrupt = threading.Event()
            if self._past_deadline() or any(progress.cancel.is_set() for progress in live):
                self._interrupt.set()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _call(self, group: list[Job]) -> None:
        """One pipeline call for the group; each job ends done, failed, cancelled or back in the queue."""
        started = time.perf_counter()
        interrupt = self._interrupt
        live = [self.running[job.id] for job in group]

        recorded = [0.0]  # when the steps were last recorded in a shared store

        def on_step(done: int, total: int) -> None:
            for job, progress in zip(group, live):
                progress.done, progress.total = done, total
                self.on_progress(job.id)
            self.metrics.step_seconds.observe((time.perf_counter() - started) / max(done, 1))
            if self._past_deadline():
                interrupt.set()
            if self.store.shared and time.monotonic() - recorded[0] >= PROGRESS_INTERVAL_S:
                recorded[0] = time.monotonic()
                self._share_progress(group, done, total)

        def on_preview(done: int, total: int, image: Any) -> None:
            encoded = io.BytesIO()
            image.save(encoded, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
            live[0].preview, live[0].preview_step = encoded.getvalue(), done
            self.on_progress(group[0].id)
            if self.store.shared:
                self._share_progress(group[:1], done, total, live[0].preview)

        try:
            if interrupt.is_set():
                raise Cancelled("interrupted before it started")
            results = self.engine.generate_many([job.request for job in group], on_step=on_step, cancel=interrupt,
                                                on_preview=on_preview)
        except Cancelled:
            for job, progress in zip(group, live):
                if progress.cancel.is_set():
                    self.store.mark_cancelled(job.id, self.worker_id)
                    _discard_inputs(job)
                    self.metrics.jobs.labels("cancelled").inc()
                    log.info("job %s cancelled after %.1f s", job.id, time.perf_counter() - started)
                else:  # stopped for another job of its batch, or for a shutdown: it runs again
                    self.store.requeue(job.id, self.worker_id)
            return
        except Exception as error:  # noqa: BLE001 - whatever a job does, the worker goes on
            self._recover(error)
            if len(group) == 1:
                self._fail(group[0], error, time.perf_counter() - started)
                return
            for job in group:  # one job of the batch may be the cause: each runs alone
                self._register([job])
                self._call([job])
            return
        seconds = time.perf_counter() - started
        if self._last_results is not None:
            self._last_results.result()  # the previous call's results are recorded: one call's in memory at most
        with self._lock:
            self._recording.update(job.id for job in group)
        self._last_results = self._results.submit(self._record_results, group, results, seconds)

    def _record_results(self, group: list[Job], results: list[list[Any]], seconds: float) -> None:
        """On the results thread: each job's files written and synced, then the job recorded done (or failed)."""
        for job, outputs in zip(group, results):
            try:
                self._finish(job, outputs, seconds)
            except Exception as error:  # noqa: BLE001 - a full disk fails this job, not the worker
                try:
                    self._fail(job, error, seconds)
                except Exception:  # noqa: BLE001 - the job stays running and runs again at the next start
                    log.exception("job %s: its failure could not be recorded", job.id)
            finally:
                with self._lock:
                    self._recording.discard(job.id)
                    self.running.pop(job.id, None)

    def _finish(self, job: Job, outputs: list[Any], seconds: float) -> None:
        """Write the job's files, sync them and their folder to disk, and only then record it done: a row that says
        done always has its files, even after a power loss."""
        records, paths, files = [], [], {}
        for index, output in enumerate(outputs):
            path, data = output.save_encoded(self.images_dir / f"{job.id}-{index}")
            paths.append(path)
            records.append({"file": path.name, "seed": output.seed, "infotext": output.infotext})
            if data is not None:
                self.kept.keep(path.name, data)
            if self.results_in_store:
                files[path.name] = data if data is not None else path.read_bytes()
        if self.results_in_store:
            self.store.save_results(files)
        else:
            sync_to_disk(paths)
        self._record(job.id, lambda: self.store.finish(job.id, records, self.worker_id))
        _discard_inputs(job)
        self.metrics.jobs.labels("done").inc()
        self.metrics.job_seconds.observe(seconds)
        self.metrics.images.inc(len(outputs))
        log.info("job %s done: %s, %d image%s in %.1f s", job.id, job.request.recipe, len(outputs),
                 "" if len(outputs) == 1 else "s", seconds)

    def _fail(self, job: Job, error: Exception, seconds: float) -> None:
        """Record the failure; an ImagegenError keeps its class, by which the APIs answer with its HTTP status."""
        ours = isinstance(error, ImagegenError)
        message = str(error) if ours else f"{type(error).__name__}: {error}"
        log.warning("job %s failed after %.1f s: %s: %s", job.id, seconds, job.request.recipe, message)
        self._record(job.id, lambda: self.store.fail(job.id, message[:2000], type(error).__name__ if ours else None,
                                                     self.worker_id))
        _discard_inputs(job)
        self.metrics.jobs.labels("failed").inc()

    def _share_progress(self, group: list[Job], done: int, total: int, preview: bytes | None = None) -> None:
        """The steps (and the preview) in the shared store, for the API in another process; a miss is no failure."""
        try:
            for job in group:
                self.store.record_progress(job.id, done, total, preview, done if preview is not None else 0)
        except StoreUnavailable as error:
            log.warning("progress not recorded: %s", error)

    @staticmethod
    def _recover(error: Exception) -> None:
        """Free what a failed call held (an out-of-memory error leaves cached blocks behind)."""
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _discard_inputs(job: Job) -> None:
    discard_inputs(job.request.init_image, job.request.mask_image, job.request.control_image)
