"""Shared timing helpers: medians over repeats after warm-up, the compared pair interleaved run by run."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    capability = torch.backends.cpu.get_cpu_capability()  # the vector instructions torch's CPU kernels use
    return f"{cpu} ({capability}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def paired_medians(functions: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved in every repeat so drift hits all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """A practical peak: GFLOP/s of a large float32 matmul on this machine."""
    a = torch.randn(size, size)
    seconds = paired_medians({"mm": lambda: a @ a}, repeats=repeats, warmup=1)["mm"]
    return 2 * size**3 / seconds / 1e9
