"""Celery tasks of the image service: CPU-bound Pillow work on workers, through Leveret.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ celery -A tasks worker -Q images -n img1@%h
    AMQP_URL=... celery -A tasks worker -Q celery,maintenance -n ops@%h

* results: ``rpc://`` -- each result goes back over AMQP to the process that sent the
  task (here the web app), nothing is stored.  (rpc:// cannot run Celery chords; the web
  app does the chord's job itself: when a group is done it sends ``summarize``.)
* routing: thumbnails go to the ``images`` queue (workers sized for CPU work), cleanup to
  ``maintenance``, the rest to ``celery``.
* ``acks_late`` + ``task_reject_on_worker_lost``: a task is acked after it ran, so if its
  worker dies mid-task the broker hands the message to another worker.
* retries: storage hiccups (``TransientStorageError``) are retried with a countdown.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time

from celery import Celery
from PIL import Image, ImageFilter, ImageOps, ImageStat

BROKER_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MEDIA_DIR = os.environ.get("MEDIA_DIR", "/tmp/imageshop")
SIZES = (64, 256, 640)

app = Celery("imageshop", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    task_routes={
        "tasks.thumbnail": {"queue": "images"},
        "tasks.cleanup_upload": {"queue": "maintenance"},
    },
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # CPU-bound: take one task at a time
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class TransientStorageError(OSError):
    """Simulated hiccup of the thumbnail store: retried."""


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def thumbnail(self, path: str, size: int) -> dict:
    """Resize, sharpen and store one thumbnail (CPU-bound)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            im = im.filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=3))
            if size == SIZES[0] and self.request.retries == 0:
                # the first write of the smallest size always "fails" once: shows a retry
                raise TransientStorageError("thumbnail store busy")
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85, optimize=True)
    except TransientStorageError as exc:
        raise self.retry(exc=exc) from exc
    data = buf.getvalue()
    out_dir = os.path.join(MEDIA_DIR, "thumbs")
    os.makedirs(out_dir, exist_ok=True)
    name = f"{os.path.splitext(os.path.basename(path))[0]}-{size}.jpg"
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)
    return {"size": size, "file": name, "width": im.width, "height": im.height,
            "bytes": len(data), "sha1": hashlib.sha1(data).hexdigest()[:12],
            "worker": self.request.hostname, "retries": self.request.retries,
            "redelivered": bool((self.request.delivery_info or {}).get("redelivered"))}


@app.task
def summarize(image_id: str, thumbs: list[dict], original: str) -> dict:
    """The "chord body": runs once every thumbnail of an image is done."""
    with Image.open(original) as im:
        stat = ImageStat.Stat(im.convert("RGB"))
        mean = [round(c) for c in stat.mean]
    return {"image": image_id, "thumbnails": len(thumbs),
            "total_bytes": sum(t["bytes"] for t in thumbs),
            "mean_rgb": mean, "summarized_by": socket.gethostname()}


@app.task
def cleanup_upload(path: str) -> bool:
    """Delete an original upload (scheduled with a countdown when it is uploaded)."""
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False


@app.task
def ping() -> float:
    return time.time()
