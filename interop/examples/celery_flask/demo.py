"""End to end: Flask upload -> Celery workers (Pillow) through Leveret -> results.

    python interop/examples/celery_flask/demo.py            # starts its own Leveret
    python interop/examples/celery_flask/demo.py --url amqp://guest:guest@127.0.0.1:5672/

Starts three workers (img1 and img2 on the ``images`` queue, ops on ``celery`` and
``maintenance``) and the Flask app, uploads a batch of generated photos over HTTP, kills
img1 with SIGKILL while it is busy (acks_late: its tasks are redelivered to img2), waits
for every image's thumbnails and summary, runs ``celery inspect``/``control`` and checks
that the countdown-scheduled cleanup removed the originals.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # interop/examples: _common
sys.path.insert(0, HERE)
from _common import broker, parser  # noqa: E402

IMAGES = 8
CLEANUP_AFTER = 4.0


def make_photo(seed: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFilter

    rnd = random.Random(seed)
    im = Image.new("RGB", (1600, 1200), tuple(rnd.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = rnd.randrange(1600), rnd.randrange(1200)
        r = rnd.randrange(20, 300)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=tuple(rnd.randrange(256) for _ in range(3)))
    im = im.filter(ImageFilter.GaussianBlur(3))
    buf = io.BytesIO()
    im.save(buf, "JPEG" if seed % 2 else "PNG")
    return buf.getvalue()


def start_worker(name: str, queues: str, env: dict, logdir: str) -> subprocess.Popen:
    log = open(os.path.join(logdir, f"{name}.log"), "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-n", f"{name}@%h",
         "-Q", queues, "--pool", "prefork", "-c", "2", "-l", "WARNING",
         "--without-gossip", "--without-mingle"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def celery_cli(*args: str, env: dict) -> str:
    r = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", *args], cwd=HERE,
                       env=env, capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr).strip()


def main() -> None:
    args = parser(__doc__).parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with broker(args.url) as url, tempfile.TemporaryDirectory(prefix="imageshop-") as media:
        env = dict(os.environ, AMQP_URL=url, MEDIA_DIR=media,
                   CLEANUP_AFTER=str(CLEANUP_AFTER), PYTHONPATH=HERE)
        os.environ.update(AMQP_URL=url, MEDIA_DIR=media, CLEANUP_AFTER=str(CLEANUP_AFTER))
        workers = {
            "img1": start_worker("img1", "images", env, media),
            "img2": start_worker("img2", "images", env, media),
            "ops": start_worker("ops", "celery,maintenance", env, media),
        }
        server = None
        try:
            from tasks import app as celery_app
            from web import app as flask_app
            from werkzeug.serving import make_server

            deadline = time.monotonic() + 60
            while True:
                names = {n.split("@")[0] for r in celery_app.control.ping(timeout=1) for n in r}
                if names >= set(workers):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not start: {names}")
            print("workers up:", sorted(names))

            server = make_server("127.0.0.1", 0, flask_app, threaded=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            base = f"http://127.0.0.1:{server.server_port}"

            photos = [make_photo(i) for i in range(IMAGES)]
            t0 = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                ids = [body["id"] for status, body in pool.map(
                    lambda p: http("POST", f"{base}/images", p), photos)]
            print(f"uploaded {len(ids)} images in {time.monotonic() - t0:.2f} s (202 each)")

            time.sleep(0.3)
            kill(workers["img1"])  # mid-batch: its unacked tasks go back to the queue
            print("killed worker img1 (SIGKILL)")

            done: dict[str, dict] = {}
            deadline = time.monotonic() + 60
            while len(done) < len(ids):
                for image_id in ids:
                    if image_id not in done:
                        _, job = http("GET", f"{base}/images/{image_id}")
                        if job["status"] in ("done", "failed"):
                            done[image_id] = job
                if time.monotonic() > deadline:
                    _, job = http("GET", f"{base}/images/{ids[0]}")
                    for name in workers:
                        with open(os.path.join(media, f"{name}.log"), errors="replace") as f:
                            print(f"--- {name}\n{f.read()[-2000:]}", file=sys.stderr)
                    raise TimeoutError(f"{len(done)} of {len(ids)} images done; first: {job}")
                time.sleep(0.1)
            print(f"all {len(ids)} images processed in {time.monotonic() - t0:.2f} s")
            by_worker: dict[str, int] = {}
            for job in done.values():
                assert job["status"] == "done", job
                sizes = sorted(t["size"] for t in job["thumbnails"])
                assert sizes == [64, 256, 640], sizes
                assert any(t["retries"] >= 1 for t in job["thumbnails"]), "a retry happened"
                assert job["summary"]["thumbnails"] == 3
                for t in job["thumbnails"]:
                    w = t["worker"].split("@")[0]
                    by_worker[w] = by_worker.get(w, 0) + 1
            first = done[ids[0]]
            print("example:", json.dumps({k: first[k] for k in ("id", "status", "summary")}))
            redelivered = sum(t["redelivered"] for j in done.values() for t in j["thumbnails"])
            print("thumbnails per worker:", by_worker,
                  f"({redelivered} redelivered after img1 died)")
            assert by_worker.get("img2", 0) > 0

            print("$ celery inspect ping\n" + celery_cli("inspect", "ping", "-t", "2", env=env))
            queues = celery_app.control.inspect(timeout=2).active_queues() or {}
            print("inspect().active_queues():",
                  {node: [q["name"] for q in qs] for node, qs in sorted(queues.items())})
            print("$ celery control rate_limit tasks.thumbnail 20/s\n" + celery_cli(
                "control", "rate_limit", "tasks.thumbnail", "20/s", "-t", "2", env=env))

            uploads_dir = os.path.join(media, "uploads")
            wait = max(0.0, CLEANUP_AFTER + 3 - (time.monotonic() - t0))
            deadline = time.monotonic() + wait + 10
            while os.listdir(uploads_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = os.listdir(uploads_dir)
            print(f"countdown cleanup ({CLEANUP_AFTER:.0f} s after upload): "
                  f"{len(ids) - len(left)} of {len(ids)} originals removed")
            assert not left, left
            print("ok")
        finally:
            if server is not None:
                server.shutdown()
            for w in workers.values():
                kill(w, signal.SIGTERM)
            for w in workers.values():
                try:
                    w.wait(10)
                except subprocess.TimeoutExpired:
                    kill(w)
                    w.wait(5)


if __name__ == "__main__":
    main()
