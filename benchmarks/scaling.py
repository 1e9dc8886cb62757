"""How inference cost grows with batch and image size, how close it runs to the hardware, and CPU options.

    python benchmarks/scaling.py [--model roi_resnet50_add_l1] [--batches 1 2 4 8 16] [--sizes 128 224 320]

Throughput (images/s) and achieved GFLOP/s (FlopCounterMode's count / time) against the machine's practical
peak (a large float32 matmul). Then each CPU option alone against the default (batch 8, 224x224):
threads, channels-last, bf16 autocast, torch.compile, no_grad against inference_mode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, matmul_peak_gflops, paired_medians

import roi_attention  # noqa: F401


def flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


def packed(batch: int, size: int) -> torch.Tensor:
    x = torch.randn(batch, 4, size, size)
    x[:, 3] = 0
    x[:, 3, size // 4 : size // 2, size // 4 : size // 2] = 1
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="roi_resnet50_add_l1")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--sizes", nargs="*", type=int, default=[128, 224, 320])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-options", action="store_true", help="skip the CPU-options table")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile in the options table")
    args = parser.parse_args(argv)
    model = timm.create_model(args.model).eval()
    peak = matmul_peak_gflops()
    print(f"machine: {machine()}; {args.model}; practical peak (2048^3 matmul) {peak:.0f} GFLOP/s")
    print(f"{'batch':>5} {'size':>5} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for size in args.sizes:
        for batch in args.batches:
            x = packed(batch, size)
            with torch.inference_mode():
                seconds = paired_medians({"run": lambda x=x: model(x)}, repeats=args.repeats, warmup=1)["run"]
            achieved = flops(model, x) / seconds / 1e9
            print(f"{batch:5d} {size:5d} {batch / seconds:9.1f} {achieved:8.1f} {achieved / peak:8.1%}", flush=True)
    if args.no_options:
        return 0
    x = packed(8, 224)
    ways = {"default (inference_mode, fp32, 2 threads)": lambda: model(x)}
    channels_last = timm.create_model(args.model).eval().to(memory_format=torch.channels_last)
    x_channels_last = x.contiguous(memory_format=torch.channels_last)
    ways["channels_last"] = lambda: channels_last(x_channels_last)
    ways["bf16 autocast"] = lambda: _autocast(model, x)
    if not args.no_compile:
        compiled = torch.compile(timm.create_model(args.model, check_inputs=False).eval())
        ways["torch.compile"] = lambda: compiled(x)
    with torch.inference_mode():
        times = paired_medians(ways, repeats=args.repeats, warmup=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.inference_mode():
        one_thread = paired_medians({"1 thread": lambda: model(x)}, repeats=args.repeats, warmup=1)["1 thread"]
    torch.set_num_threads(threads)
    with torch.no_grad():
        no_grad = paired_medians({"no_grad": lambda: model(x)}, repeats=args.repeats, warmup=1)["no_grad"]
    base = times.pop("default (inference_mode, fp32, 2 threads)")
    print(f"\noptions at batch 8, 224x224 (time relative to the default {base * 1000:.0f} ms; < 1 is faster)")
    for name, seconds in {**times, "1 thread": one_thread, "no_grad instead of inference_mode": no_grad}.items():
        print(f"  {name:36s} {seconds / base:6.2f}")
    return 0


def _autocast(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


if __name__ == "__main__":
    sys.exit(main())
