"""`imagegen serve --repair`: a damaged job store is moved aside and the finished jobs rebuilt from the result files.

Every image and video the server wrote carries its generation parameters (the infotext) and is named
JOBID-INDEX.EXT, so the history of finished jobs can be read back from the images folder alone; queued and running
jobs, whose requests lived only in the store, are lost with it (their clients were told nothing was made).
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path

from imagegen.errors import ImagegenError, StoreDamaged
from imagegen.server.service import JOB_ID
from imagegen.server.store.sqlite import SQLiteJobStore

log = logging.getLogger("imagegen.server")
RESULT_NAME = re.compile(rf"(?P<job>{JOB_ID.pattern})-(?P<index>\d+)(?:\.\w+)?")


def repair(store_path: Path, images_dir: Path) -> SQLiteJobStore:
    """A store that opens is kept as it is. A damaged one, with its write-ahead files, is moved aside, and a new one
    gets every finished job from `images_dir` whose files carry their parameters. Returns the store to use."""
    try:
        store = SQLiteJobStore(store_path)
        log.info("the job store %s is not damaged: nothing to repair", store_path)
        return store
    except StoreDamaged:
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        damaged = store_path.with_name(store_path.name + suffix)
        if damaged.exists():
            damaged.rename(damaged.with_name(f"{store_path.name}.damaged-{stamp}{suffix}"))
    store = SQLiteJobStore(store_path)
    restored, unreadable = 0, 0
    for job_id, files in sorted(_results_by_job(images_dir).items(), key=lambda item: item[1][0].stat().st_mtime):
        try:
            store.restore(job_id, files)
            restored += 1
        except (ImagegenError, ValueError, OSError) as error:
            unreadable += 1
            log.warning("job %s not restored: %s", job_id, error)
    log.warning("the damaged job store is kept as %s.damaged-%s; %d finished job(s) restored from %s%s",
                store_path.name, stamp, restored, images_dir,
                f", {unreadable} could not be read" if unreadable else "")
    return store


def _results_by_job(images_dir: Path) -> dict[str, list[Path]]:
    jobs: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in images_dir.iterdir() if images_dir.is_dir() else ():
        match = RESULT_NAME.fullmatch(path.name)
        if match:
            jobs[match["job"]].append((int(match["index"]), path))
    return {job_id: [path for _, path in sorted(files)] for job_id, files in jobs.items()}
