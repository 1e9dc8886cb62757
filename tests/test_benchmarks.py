"""A tiny run of each benchmark, so none of them rots (CI checks that they run, not their numbers)."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_dataset_build_memory_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "dataset_build_memory.py"), "--images", "4", "--factor", "3", "--size", "96"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"peak RSS ratio 12/4 photos: \d+\.\d{3}", result.stdout), result.stdout
