"""Prometheus metrics of one server: its own registry, so that two servers in one process (tests) never mix."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("imagegen_queue_depth", "Jobs waiting in the queue", registry=self.registry)
        self.jobs_by_state = Gauge("imagegen_jobs", "Jobs in the database by state", ["state"], registry=self.registry)
        self.jobs = Counter("imagegen_jobs_finished", "Jobs finished since start, by outcome", ["outcome"],
                            registry=self.registry)
        self.images = Counter("imagegen_images_generated", "Images (or videos) generated since start",
                              registry=self.registry)
        self.step_seconds = Histogram("imagegen_step_seconds", "Mean seconds per denoising step of a call",
                                      buckets=_STEP_BUCKETS, registry=self.registry)
        self.job_seconds = Histogram("imagegen_job_seconds", "Seconds from a job's start to its result",
                                     buckets=_JOB_BUCKETS, registry=self.registry)

    def exposition(self, counts: dict[str, int]) -> bytes:
        """The text format, with the gauges read from the database just now."""
        self.queue_depth.set(counts.get("queued", 0))
        for state, count in counts.items():
            self.jobs_by_state.labels(state).set(count)
        return generate_latest(self.registry)
