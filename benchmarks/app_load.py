"""The app under load: N clients sending the worst requests its limits allow, for a fixed time.

    python benchmarks/app_load.py                          # 8 and 32 clients, 2 minutes each
    python benchmarks/app_load.py --clients 4 --seconds 20 --side 1000   # a quick look

The server is `roi-attention app` in its own process (a roi_resnet18_add_l1 at 224 px, random weights: the cost of
a request is the photo, the masks and the model's forward, not what it learnt), with answer pictures and uploads
kept `--keep-seconds`. Each request: a photo at the app's pixel limit (`--side` squared, 4000: 16 Mpx) and
MAX_REGIONS mask files of that size, one model. Each client sends one request after another through
`gradio_client`. Printed: requests answered, turned away by the full queue (Gradio's "queue is full"), failed;
latency p50/p95 of the answered ones; and, sampled every 2 s, the server's resident memory and the size of its
temporary folder (uploads and answers), by quarter of the run, so that growth shows.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import timm
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import machine

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.app import MAX_REGIONS
from roi_attention.hub import save_model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worst_request(folder: Path, side: int) -> tuple[Path, list[Path]]:
    """A ``side`` x ``side`` photo and MAX_REGIONS masks of its size (boxes along the diagonal)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    photo = folder / "photo.png"
    Image.fromarray(np.stack(np.broadcast_arrays(ramp[None], ramp[:, None], ramp[::-1][None]), -1)).save(photo)
    masks = []
    step = max(1, side // MAX_REGIONS)
    for index in range(MAX_REGIONS):
        mask = np.zeros((side, side), np.uint8)
        mask[index * step : index * step + step, index * step : index * step + step] = 255
        masks.append(folder / f"mask{index}.png")
        Image.fromarray(mask).save(masks[-1])
    return photo, masks


def folder_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total / 2**20


def serve(model_dir: Path, temp: Path, keep_s: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(temp / "gradio"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "roi_attention.cli", "app", "--model", f"load={model_dir}", "--port", str(port),
               "--keep-seconds", str(keep_s)]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app did not start: {server.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the app did not start in 3 minutes")


def load(url: str, clients: int, seconds: float, photo: Path, masks: list[Path], server, temp: Path) -> dict:
    from gradio_client import Client, handle_file

    samples: list[tuple[float, float, float]] = []  # time, RSS MB, temp folder MB
    done = threading.Event()
    process = psutil.Process(server.pid)

    def sample() -> None:
        start = time.monotonic()
        while not done.is_set():
            rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
            samples.append((time.monotonic() - start, rss, folder_mb(temp)))
            done.wait(2.0)

    outcomes: list[tuple[str, float]] = []

    def client_loop(_: int) -> None:
        client = Client(url, verbose=False)
        editor = dict(background=handle_file(str(photo)), layers=[], composite=None)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                client.predict(editor, [handle_file(str(m)) for m in masks], ["load"], api_name="/classify")
                outcomes.append(("answered", time.monotonic() - started))
            except Exception as error:  # the full queue, uploads removed while it waited, or a failure
                if "queue is full" in str(error).lower():
                    kind = "turned away"
                elif "removed before its turn came" in str(error):
                    kind = "uploads expired while queued (--keep-seconds)"
                else:
                    kind = f"failed: {str(error)[:80]}"
                outcomes.append((kind, time.monotonic() - started))
                time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, range(clients)))
    done.set()
    sampler.join()
    return dict(outcomes=outcomes, samples=samples)


def report(clients: int, seconds: float, result: dict) -> str:
    outcomes, samples = result["outcomes"], result["samples"]
    latencies = sorted(t for kind, t in outcomes if kind == "answered")
    kinds: dict[str, int] = {}
    for kind, _ in outcomes:
        kinds[kind] = kinds.get(kind, 0) + 1
    lines = [f"## {clients} clients, {seconds:.0f} s"]
    lines.append(", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items())) or "no request finished")
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        lines.append(f"latency of the answered: p50 {p50:.1f} s, p95 {p95:.1f} s")
    quarters = np.array_split(np.array(samples), 4) if len(samples) >= 4 else [np.array(samples)]
    lines.append("quarter | server RSS max (MB) | temp folder max (MB)")
    for index, part in enumerate(quarters):
        if len(part):
            lines.append(f"{index + 1} | {part[:, 1].max():.0f} | {part[:, 2].max():.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", nargs="*", type=int, default=[8, 32])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--side", type=int, default=4000, help="the photo's and masks' side (4000: 16 Mpx)")
    parser.add_argument(
        "--keep-seconds",
        type=float,
        default=30.0,
        help="the app's --keep-seconds (30: the clean-up shows within a run; requests that wait longer in the "
        "queue find their uploads gone and are counted apart)",
    )
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch_model = timm.create_model("roi_resnet18_add_l1", num_classes=10)
        model_dir = save_model(torch_model, folder / "model", label_names=[f"class {i}" for i in range(10)])
        photo, masks = worst_request(folder, args.side)
        for clients in args.clients:
            temp = folder / f"server-{clients}"
            temp.mkdir()
            server, url = serve(model_dir, temp, args.keep_seconds)
            try:
                result = load(url, clients, args.seconds, photo, masks, server, temp)
            finally:
                server.terminate()
                server.wait(timeout=30)
            print(report(clients, args.seconds, result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
