"""The web side: upload an image, get thumbnails made by Celery workers.

    AMQP_URL=... MEDIA_DIR=/tmp/imageshop flask --app web run
    curl --data-binary @photo.jpg localhost:5000/images      # -> 202 {"id": ...}
    curl localhost:5000/images/<id>                          # status, thumbnails, summary

POST /images stores the upload and answers 202 at once.  One background thread does all
the Celery work of this process (Celery result objects are not for sharing between
threads): it sends a *group* of ``thumbnail`` tasks per image (one per size, routed to the
``images`` queue), schedules ``cleanup_upload`` with a countdown, polls the results that
come back over rpc:// and, when an image's group is complete, sends ``summarize`` with the
group's results -- what a chord does, which the rpc:// backend cannot run.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
import uuid

from celery import group
from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Flask, abort, jsonify, request
from PIL import Image, UnidentifiedImageError
from tasks import MEDIA_DIR, SIZES, cleanup_upload, summarize, thumbnail

CLEANUP_AFTER = float(os.environ.get("CLEANUP_AFTER", "30"))  # seconds

app = Flask(__name__)
jobs: dict[str, dict] = {}
jobs_lock = threading.Lock()
uploads: queue.Queue[tuple[str, str]] = queue.Queue()


def update(image_id: str, **fields) -> None:
    with jobs_lock:
        jobs[image_id].update(fields)


def celery_loop() -> None:
    """Dispatch new uploads and follow their results (the only thread touching Celery)."""
    inflight: dict[str, dict] = {}
    while True:
        try:
            image_id, path = uploads.get(timeout=0.05)
        except queue.Empty:
            pass
        else:
            thumbs = group(thumbnail.s(path, size) for size in SIZES).apply_async()
            cleanup = cleanup_upload.apply_async((path,), countdown=CLEANUP_AFTER)
            update(image_id, cleanup_task=cleanup.id, cleanup_eta=time.time() + CLEANUP_AFTER)
            inflight[image_id] = {"path": path, "thumbs": thumbs, "summary": None}
        for image_id, job in list(inflight.items()):
            # get() with a short timeout, not ready(): rpc:// results arrive on a consumer
            # and are only read while someone waits on them
            try:
                if job["summary"] is None:
                    results = job["thumbs"].get(timeout=0.02)
                    update(image_id, status="summarizing", thumbnails=results)
                    job["summary"] = summarize.delay(image_id, results, job["path"])
                else:
                    summary = job["summary"].get(timeout=0.02)
                    update(image_id, status="done", summary=summary, finished=time.time())
                    del inflight[image_id]
            except CeleryTimeout:
                continue
            except Exception as exc:  # noqa: BLE001 - reported to the client
                update(image_id, status="failed", error=f"{type(exc).__name__}: {exc}")
                del inflight[image_id]


threading.Thread(target=celery_loop, name="celery-io", daemon=True).start()


@app.post("/images")
def upload():
    data = request.get_data()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            fmt = im.format
    except (UnidentifiedImageError, OSError):
        abort(415, "not an image")
    image_id = uuid.uuid4().hex[:12]
    os.makedirs(os.path.join(MEDIA_DIR, "uploads"), exist_ok=True)
    path = os.path.join(MEDIA_DIR, "uploads", f"{image_id}.{fmt.lower()}")
    with open(path, "wb") as f:
        f.write(data)
    with jobs_lock:
        jobs[image_id] = {"id": image_id, "status": "processing", "format": fmt,
                          "uploaded": time.time()}
    uploads.put((image_id, path))
    return jsonify(id=image_id, status_url=f"/images/{image_id}"), 202


@app.get("/images/<image_id>")
def status(image_id: str):
    with jobs_lock:
        job = jobs.get(image_id)
        if job is None:
            abort(404)
        return jsonify(job)


@app.get("/healthz")
def healthz():
    return jsonify(ok=True, jobs=len(jobs))
