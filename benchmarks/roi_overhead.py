"""What the ROI side branch costs: every roi_{backbone}_* variant against the plain timm backbone.

    python benchmarks/roi_overhead.py                    # resnet50, batch 8, 224x224
    python benchmarks/roi_overhead.py --backbone resnet18 --size 64 --batch 2 --repeats 2 --variants add_l1

Inference (inference_mode) and one training step (forward, backward, SGD step), medians over repeats with
the ROI model and the plain backbone interleaved; ratios pair by pair. Also with the input value checks off
(check_inputs=False) to show what the checks cost. Peak memory: each configuration in a fresh process,
peak RSS above the process's RSS after building the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians

import roi_attention


def build(name: str, check_inputs: bool = True) -> torch.nn.Module:
    kwargs = {} if not name.startswith("roi_") else dict(check_inputs=check_inputs)
    return timm.create_model(name, **kwargs)


def step_fn(model: torch.nn.Module, x: torch.Tensor, train: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    if not train:
        model.eval()

        def infer():
            with torch.inference_mode():
                model(x)

        return infer
    model.train()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model(x).float().logsumexp(-1).mean().backward()
        optimizer.step()

    return train_step


def inputs(name: str, batch: int, size: int) -> torch.Tensor:
    image = torch.randn(batch, 3, size, size)
    if not name.startswith("roi_"):
        return image
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 3 : size // 2] = 1
    return torch.cat([image, mask], 1)


def peak_memory_mib(name: str, batch: int, size: int, train: bool) -> float:
    """Peak resident memory (MiB) one step adds, in a fresh process: after a warm-up step the kernel's peak-RSS
    mark is reset (/proc/self/clear_refs), and glibc is told to map large buffers (so freed tensors leave RSS)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import roi_overhead as b;"
        "m = b.build(sys.argv[2]); x = b.inputs(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]));"
        "f = b.step_fn(m, x, sys.argv[5] == '1'); f(); b.reset_peak(); base = b.rss_mib('VmRSS'); f();"
        "print(json.dumps(b.rss_mib('VmHWM') - base))"
    )
    args = [sys.executable, "-c", code, str(Path(__file__).parent), name, str(batch), str(size), str(int(train))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    return float(subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout.splitlines()[-1])


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--variants", nargs="*", default=list(roi_attention.VARIANTS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(
        f"machine: {machine()}; {args.backbone}, batch {args.batch}, {args.size}x{args.size}, medians of {args.repeats}"
    )
    plain = build(args.backbone)
    memory = {}
    if not args.no_memory:
        memory = {train: peak_memory_mib(args.backbone, args.batch, args.size, train) for train in (False, True)}
    header = f"{'variant':16} {'infer s':>8} {'ratio':>6} {'no-check':>8} {'train s':>8} {'ratio':>6} {'no-check':>8}"
    header += "" if args.no_memory else f" {'mem inf':>8} {'mem train':>9}"
    print(header)
    rows = []
    for variant in args.variants:
        name = f"roi_{args.backbone}_{variant}"
        row = dict(variant=variant)
        for train in (False, True):
            roi, roi_unchecked = build(name), build(name, check_inputs=False)
            x_roi, x_plain = inputs(name, args.batch, args.size), inputs(args.backbone, args.batch, args.size)
            times = paired_medians(
                {
                    "plain": step_fn(plain, x_plain, train),
                    "roi": step_fn(roi, x_roi, train),
                    "unchecked": step_fn(roi_unchecked, x_roi, train),
                },
                repeats=args.repeats,
            )
            key = "train" if train else "infer"
            row[f"{key}_s"] = times["roi"]
            row[f"{key}_ratio"] = times["roi"] / times["plain"]
            row[f"{key}_ratio_unchecked"] = times["unchecked"] / times["plain"]
            if memory:
                row[f"{key}_memory_ratio"] = peak_memory_mib(name, args.batch, args.size, train) / memory[train]
        line = (
            f"{variant:16} {row['infer_s']:8.3f} {row['infer_ratio']:6.3f} {row['infer_ratio_unchecked']:8.3f} "
            f"{row['train_s']:8.3f} {row['train_ratio']:6.3f} {row['train_ratio_unchecked']:8.3f}"
        )
        if memory:
            line += f" {row['infer_memory_ratio']:8.3f} {row['train_memory_ratio']:9.3f}"
        print(line, flush=True)
        rows.append(row)
    print(
        "ratios are ROI model / plain backbone on the same input; targets for _l1 and _l3: time <= 1.03, "
        "peak memory <= 1.05"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine(), args=vars(args), rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
