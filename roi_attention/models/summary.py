"""Parameter and multiply-accumulate counts of registered models, computed without real weights."""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .roi_net import BACKBONES, VARIANTS, RoiAttentionNet, model_cfgs


def model_summary(name: str, input_size: tuple[int, int] | None = None) -> dict[str, float | int | str]:
    """Parameters and GMACs of one forward at the model's input size (built on the meta device: no memory)."""
    with torch.device("meta"), torch.no_grad():
        model = timm.create_model(name, check_inputs=False).eval()
        size = input_size or tuple(model.pretrained_cfg["input_size"][1:])
        x = torch.zeros(1, 4, *size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    cfg = model_cfgs[name]
    return dict(
        model=name,
        backbone=cfg["backbone"],
        variant=cfg["variant"],
        paper=VARIANTS[cfg["variant"]].paper,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        side_branch_params=sum(p.numel() for p in model.roi_branch.parameters()),
        gmacs=counter.get_total_flops() / 2e9,
        input_size=f"{size[0]}x{size[1]}",
    )


def markdown_table(names: list[str] | None = None) -> str:
    """A markdown table of every registered ROI model with its parameter count and GMACs."""
    names = names or timm.list_models("roi_*")
    rows = [
        "| model | backbone | variant | paper | params (M) | side-branch params | GMACs | input |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for name in names:
        s = model_summary(name)
        rows.append(
            f"| `{s['model']}` | {s['backbone']} | {s['variant']} | {s['paper']} | {s['params_m']:.2f} "
            f"| {s['side_branch_params']:,} | {s['gmacs']:.2f} | {s['input_size']} |"
        )
    return "\n".join(rows)


def merge_points_table(backbones: list[str] | None = None) -> str:
    """A markdown table of the backbone modules each kind of merge point merges after, on each backbone."""
    rows = [
        "| backbone | `_l1` (after) | `_l3` (after) | `_all` (after) |",
        "|---|---|---|---|",
    ]
    for backbone in backbones or list(BACKBONES):
        cells = []
        for at in ("l1", "l3", "all"):
            with torch.device("meta"):  # built without memory
                model = RoiAttentionNet(backbone, f"add_{at}", num_classes=0, check_inputs=False)
            cells.append(", ".join(f"`{name}` ({channels})" for name, channels in model.merge_points))
        rows.append(f"| {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
