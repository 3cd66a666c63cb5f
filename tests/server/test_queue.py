"""The queue's guarantees, against real `imagegen serve` processes: a kill -9 loses no job and the interrupted one
gives the same image again; compatible jobs share one call and each gives the image it gives alone; a full queue
answers 429; a failing job fails alone; SIGTERM lets the running job finish, exits 0 and keeps the queue.

The worker's finer points (a batch that fails, one job of a batch cancelled, a shutdown's grace) are checked
in-process with a scripted engine, where their timing can be controlled.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imagegen.errors import Cancelled
from imagegen.request import GenerationRequest
from imagegen.server.arrivals import Arrivals
from imagegen.server.metrics import Metrics
from imagegen.server.store import FINISHED, JobStore
from imagegen.server.worker import Worker

TURBO = {"recipe": "sdxl-turbo", "width": 64, "height": 64}
SLOW_DIGITS = {"recipe": "digits", "num_inference_steps": 150, "num_images": 4}  # a second or two on one core


def submit(client: httpx.Client, **body: object) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_for(client: httpx.Client, job_id: str, condition: Callable[[dict], bool], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if condition(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is still {job['state']} after {timeout} s")


def wait_done(client: httpx.Client, job_id: str) -> dict:
    return wait_for(client, job_id, lambda job: job["state"] in FINISHED)


def wait_running(client: httpx.Client, job_id: str) -> dict:
    """The job once it has made a step (and is still running)."""
    return wait_for(client, job_id, lambda job: job["state"] == "running" and job["progress"]["done"] > 0)


def pixels(client: httpx.Client, job: dict, index: int = 0) -> np.ndarray:
    png = client.get(job["images"][index]["url"])
    assert png.status_code == 200
    return np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_kill_9_loses_no_job_and_the_interrupted_one_gives_the_same_images(serve, tmp_path) -> None:
    first = serve(tmp_path)
    with first.client() as client:
        slow = submit(client, prompt="8", **SLOW_DIGITS)  # no seed given: the server draws it at submission
        queued = [submit(client, prompt=str(digit), recipe="digits") for digit in range(3)]
        interrupted = wait_running(client, slow)
        assert interrupted["progress"]["done"] < interrupted["progress"]["total"]
        assert [client.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in queued] == ["queued"] * 3
    first.process.kill()  # SIGKILL: no shutdown code runs
    first.process.wait()

    second = serve(tmp_path)
    with second.client() as client:
        rerun, *others = [wait_done(client, job_id) for job_id in (slow, *queued)]
        assert [job["state"] for job in (rerun, *others)] == ["done"] * 4
        assert rerun["started"] > interrupted["started"], "the interrupted job ran again after the restart"
        assert rerun["started"] < min(job["started"] for job in others), "it kept its place at the queue's head"
        assert [image["seed"] for image in rerun["images"]] == [interrupted["seed"] + i for i in range(4)]
        alone = wait_done(client, submit(client, prompt="8", **SLOW_DIGITS, seed=interrupted["seed"]))
        for index in range(4):
            np.testing.assert_array_equal(pixels(client, rerun, index), pixels(client, alone, index))


@pytest.mark.slow
def test_compatible_jobs_share_one_call_and_each_gives_its_image_alone(serve, tmp_path) -> None:
    bodies = [{"prompt": "a red cube", "seed": 1}, {"prompt": "a blue ball", "seed": 2, "num_images": 2},
              {"prompt": "a green cone", "seed": 3}, {"prompt": "a cat", "seed": 4}]
    batched = serve(tmp_path / "batched", "--max-batch", "4")
    with batched.client() as client:
        blocker = submit(client, prompt="0", **SLOW_DIGITS)
        wait_running(client, blocker)  # the worker is busy: the next jobs wait in the queue together
        ids = [submit(client, **TURBO, num_inference_steps=2, **body) for body in bodies]
        client.delete(f"/v1/jobs/{blocker}")
        jobs = [wait_done(client, job_id) for job_id in ids]
        images = [[pixels(client, job, index) for index in range(len(job["images"]))] for job in jobs]
    assert [job["state"] for job in jobs] == ["done"] * 4
    # One call for the first three (4 images, the limit); the fourth waits for the next call.
    assert jobs[0]["started"] == jobs[1]["started"] == jobs[2]["started"] < jobs[3]["started"]

    alone = serve(tmp_path / "alone", "--max-batch", "1")
    with alone.client() as client:
        references = [wait_done(client, submit(client, **TURBO, num_inference_steps=2, **body)) for body in bodies]
        assert len({job["started"] for job in references}) == 4
        for job, reference, batch_images in zip(jobs, references, images):
            assert [image["seed"] for image in job["images"]] == [image["seed"] for image in reference["images"]]
            for index, image in enumerate(batch_images):
                # CPU kernels round differently for another batch size: at most one level apart.
                assert np.abs(image - pixels(client, reference, index)).max() <= 1


def test_a_full_queue_answers_429_with_retry_after(serve, tmp_path) -> None:
    server = serve(tmp_path, "--max-queue", "2")
    with server.client() as client:
        running = submit(client, prompt="1", **SLOW_DIGITS)
        wait_running(client, running)  # a running job does not count: the queue holds what waits
        waiting = [submit(client, prompt="2", recipe="digits"), submit(client, prompt="3", recipe="digits")]
        refused = client.post("/v1/jobs", json={"prompt": "4", "recipe": "digits"})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0 and "retry later" in refused.json()["detail"]
        client.delete(f"/v1/jobs/{running}")
        assert [wait_done(client, job_id)["state"] for job_id in waiting] == ["done", "done"]
        assert client.post("/v1/jobs", json={"prompt": "4", "recipe": "digits"}).status_code == 202


def test_a_job_with_a_corrupt_lora_fails_alone(serve, server_env, tmp_path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    server = serve(tmp_path / "data", env={**server_env, "IMAGEGEN_LORA_DIR": str(loras)})
    with server.client() as client:
        blocker = submit(client, prompt="0", **SLOW_DIGITS)
        wait_running(client, blocker)  # the three jobs below wait together in the queue
        ids = [submit(client, prompt="1", recipe="digits"),
               submit(client, prompt="a cat", **TURBO, loras=["broken:0.8"]),
               submit(client, prompt="2", recipe="digits")]
        client.delete(f"/v1/jobs/{blocker}")
        before, broken, after = [wait_done(client, job_id) for job_id in ids]
        assert client.get("/ready").status_code == 200
    assert before["state"] == after["state"] == "done"
    assert broken["state"] == "failed" and broken["images"] == []
    assert "broken.safetensors cannot be read" in broken["error"]


@pytest.mark.slow
def test_sigterm_finishes_the_running_job_exits_0_and_keeps_the_queue(serve, tmp_path) -> None:
    server = serve(tmp_path)
    with server.client() as client:
        running = submit(client, prompt="5", **SLOW_DIGITS)
        wait_running(client, running)
        queued = [submit(client, prompt=str(digit), recipe="digits") for digit in range(2)]
        with client.stream("GET", f"/v1/jobs/{queued[-1]}/events") as events:  # a follower does not hold it up
            lines = events.iter_lines()
            assert next(lines) == "event: queued"
            server.process.terminate()
            assert server.process.wait(timeout=60) == 0
            assert "event: stopping" in list(lines)
    stopped = time.time()

    restarted = serve(tmp_path)
    with restarted.client() as client:
        finished = client.get(f"/v1/jobs/{running}").json()
        assert finished["state"] == "done" and finished["finished"] < stopped, "it finished before the exit"
        later = [wait_done(client, job_id) for job_id in queued]
    assert [job["state"] for job in later] == ["done", "done"]
    assert min(job["started"] for job in later) > stopped, "the queued jobs waited for the restart"


# The worker in-process, with a scripted engine.

class ScriptedEngine:
    """Batches requests of equal recipe; a call takes `steps` steps of `step_s` seconds; prompt "fail" fails the
    call it is in, "unsaveable" gives an output whose file cannot be written."""

    def __init__(self, *, steps: int = 3, step_s: float = 0.01) -> None:
        self.steps, self.step_s = steps, step_s
        self.calls: list[list[str]] = []
        self.first_step = threading.Event()

    @staticmethod
    def batch_key(request: GenerationRequest) -> str:
        return request.recipe

    def generate_many(self, requests: list[GenerationRequest], *, on_step: Callable[[int, int], None],
                      cancel: threading.Event, on_preview: object = None) -> list[list[ScriptedOutput]]:
        self.calls.append([request.prompt for request in requests])
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            on_step(step, self.steps)
            self.first_step.set()
            if cancel.is_set():
                raise Cancelled("generation was cancelled")
        if any(request.prompt == "fail" for request in requests):
            raise RuntimeError("this prompt always fails")
        return [[ScriptedOutput(request.seed, request.prompt)] for request in requests]


class ScriptedOutput:
    def __init__(self, seed: int, prompt: str) -> None:
        self.seed, self.infotext, self.prompt = seed, prompt, prompt

    def save_encoded(self, stem: Path) -> tuple[Path, bytes]:
        path = stem.with_suffix(".txt")
        if self.prompt == "unsaveable":
            raise OSError(28, "No space left on device")
        if self.prompt.startswith("slow-to-write"):
            time.sleep(0.5)
        path.write_text(self.prompt)
        return path, self.prompt.encode()


@pytest.fixture
def queue(tmp_path: Path, make_store) -> Iterator[Callable[..., tuple[JobStore, Worker]]]:
    """`queue(engine, *prompts)`: a store (of each backend) holding those jobs (in that order) and a started
    worker."""
    workers: list[Worker] = []

    def make(engine: ScriptedEngine, *prompts: str, max_batch: int = 4,
             arrivals: Arrivals | None = None) -> tuple[JobStore, Worker]:
        store = make_store()
        for seed, prompt in enumerate(prompts):
            store.add(GenerationRequest(prompt=prompt, recipe="digits", seed=seed))
        (tmp_path / "images").mkdir(exist_ok=True)
        workers.append(Worker(engine, store, tmp_path / "images", Metrics(), max_batch=max_batch, idle_wait=0.01,
                              arrivals=arrivals))
        workers[-1].start()
        return store, workers[-1]

    yield make
    for worker in workers:
        worker.shutdown(grace=0)


def outcomes(store: JobStore, timeout: float = 10) -> list[tuple[str, str | None]]:
    """Every job's (state, error), oldest first, once none is queued or running (read with SQL: a job whose
    request cannot be read has no Job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store._lock:
            rows = [tuple(row) for row in store._execute("SELECT state, error FROM jobs ORDER BY seq").fetchall()]
        if all(state in FINISHED for state, _ in rows):
            return rows
        time.sleep(0.01)
    raise AssertionError(f"jobs still pending: {rows}")


def test_a_failing_batch_runs_again_job_by_job_so_only_the_bad_job_fails(queue) -> None:
    engine = ScriptedEngine()
    store, _ = queue(engine, "a", "fail", "b")
    assert outcomes(store) == [("done", None), ("failed", "RuntimeError: this prompt always fails"), ("done", None)]
    assert engine.calls == [["a", "fail", "b"], ["a"], ["fail"], ["b"]]


def test_cancelling_one_job_of_a_batch_cancels_it_alone(queue) -> None:
    engine = ScriptedEngine(steps=100)
    store, worker = queue(engine, "a", "b", "c")
    assert engine.first_step.wait(5)
    middle = store.list()[1].id
    assert store.cancel(middle) == "running" and worker.cancel(middle)
    assert [state for state, _ in outcomes(store)] == ["done", "cancelled", "done"]
    assert engine.calls == [["a", "b", "c"], ["a", "c"]]  # the others went back to the queue, and ran again


def test_a_job_whose_images_cannot_be_written_fails_and_the_worker_goes_on(queue) -> None:
    store, worker = queue(ScriptedEngine(), "unsaveable", "b", max_batch=1)
    assert outcomes(store) == [("failed", "OSError: [Errno 28] No space left on device"), ("done", None)]
    assert worker.is_alive()


def test_a_stored_job_this_version_cannot_read_fails_and_the_queue_goes_on(queue, make_store) -> None:
    earlier = make_store()
    earlier.add(GenerationRequest(prompt="a", recipe="digits", seed=1))
    with earlier._lock:  # as if written by a version with other LoRA fields
        earlier._execute("UPDATE jobs SET request=?", ('{"prompt": "a", "recipe": "digits", "loras": [{"name": 1}]}',))
    store, worker = queue(ScriptedEngine(), "b")
    (first_state, first_error), second = outcomes(store)
    assert first_state == "failed" and "cannot be read by this version" in first_error
    assert second == ("done", None) and worker.is_alive()


def test_shutdown_interrupts_a_call_past_its_grace_and_requeues_its_jobs(queue) -> None:
    engine = ScriptedEngine(steps=10_000)
    store, worker = queue(engine, "a", "b")
    assert engine.first_step.wait(5)
    worker.shutdown(grace=0.05)
    assert not worker.is_alive()
    assert [(job.state, job.started) for job in store.list()] == [("queued", None), ("queued", None)]


def test_a_job_is_done_only_after_its_files_and_their_folder_reach_the_disk(queue, tmp_path, monkeypatch) -> None:
    """The order a power loss needs: fsync the file, fsync the folder, then commit the row that says done."""
    events: list[tuple[str, str]] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{descriptor}"))), real_fsync(descriptor))[1])
    real_finish = JobStore.finish

    def finish(store: JobStore, job_id: str, results: list[dict], worker: str) -> bool:
        events.append(("done", results[0]["file"]))
        return real_finish(store, job_id, results, worker)

    monkeypatch.setattr(JobStore, "finish", finish)
    store, _ = queue(ScriptedEngine(), "a")
    assert outcomes(store) == [("done", None)]
    [job] = store.list()
    file = tmp_path / "images" / job.results[0]["file"]
    assert events == [("fsync", str(file)), ("fsync", str(tmp_path / "images")), ("done", file.name)]
    assert file.read_text() == "a"


def test_the_next_call_runs_while_the_last_ones_files_are_written(queue) -> None:
    """Results are written on their own thread: the second call starts before the first's files are on disk, and
    each job is done with its own file; the files' bytes are kept for the APIs that answer them inline."""
    engine = ScriptedEngine()
    store, worker = queue(engine, "slow-to-write", "b", max_batch=1)
    assert [state for state, _ in outcomes(store)] == ["done", "done"]
    first, second = sorted(store.list(), key=lambda job: job.created)
    assert second.started < first.finished, "the second call started only once the first was recorded"
    assert worker.kept.take(first.results[0]["file"]) == b"slow-to-write"
    assert worker.kept.take(first.results[0]["file"]) is None  # answered once; later asks read the file


def test_a_call_with_room_waits_a_moment_for_jobs_on_their_way(queue) -> None:
    """Three clients arrive together; their jobs reach the queue 5 ms apart: one call, not a call for the first job
    alone and one for the others."""
    arrivals = Arrivals()
    engine = ScriptedEngine()
    store, _ = queue(engine, arrivals=arrivals)
    ready = threading.Barrier(3)

    def client(prompt: str, delay: float) -> None:
        with arrivals.arriving():
            ready.wait()
            time.sleep(delay)
            store.add(GenerationRequest(prompt=prompt, recipe="digits", seed=1))
            arrivals.stored()

    clients = [threading.Thread(target=client, args=(prompt, delay))
               for prompt, delay in (("a", 0), ("b", 0.005), ("c", 0.01))]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert [state for state, _ in outcomes(store)] == ["done"] * 3
    assert engine.calls == [["a", "b", "c"]] and arrivals.pending == 0
