"""Live previews through the server: `preview` events on the native API's event stream and A1111's current_image."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

from PIL import Image
from test_native_api import wait_done

SLOW_SD15 = {"prompt": "a lighthouse", "recipe": "sd15", "width": 64, "height": 64, "num_inference_steps": 120,
             "seed": 3}


def jpeg(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


def test_the_event_stream_sends_previews_while_the_job_runs(server) -> None:
    with server.client() as client:
        job_id = client.post("/v1/jobs", json=SLOW_SD15).json()["id"]
        events = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
    previews = [data for name, data in events if name == "preview"]
    assert events[-1][0] == "done" and previews, [name for name, _ in events]
    assert all(0 < data["step"] <= 120 for data in previews)
    assert jpeg(previews[-1]["jpeg"]).size == (256, 256)  # the colour map's latents, enlarged


def test_a1111_progress_carries_the_current_image(server) -> None:
    with server.client() as client:
        job_id = client.post("/v1/jobs", json=SLOW_SD15).json()["id"]
        seen: list[str] = []
        finished = threading.Event()

        def poll() -> None:
            while not finished.is_set():
                current = client.get("/sdapi/v1/progress").json()["current_image"]
                if current:
                    seen.append(current)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            assert wait_done(client, job_id)["state"] == "done"
        finally:
            finished.set()
            poller.join()
    assert seen and jpeg(seen[-1]).size == (256, 256)
