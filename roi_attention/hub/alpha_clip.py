"""Alpha-CLIP's checkpoints (Sun et al., CVPR 2024; github.com/SunzeY/AlphaCLIP, Apache-2.0 code) as ROI models.

Alpha-CLIP is the paper's ``add_l1`` on a CLIP Vision Transformer: ``conv1_alpha``, a conv of the alpha channel with
the patch size as kernel and stride, is added to the patch embedding before the class token, the position
embedding and ``ln_pre``. Its alpha is the mask normalised with mean 0.5 and std 0.26. A checkpoint is the visual
tower's state dict in OpenAI CLIP's layout (attention ``in_proj`` as a linear), plus ``conv1_alpha.weight``. It
converts to ``roi_vit_*_clip_quickgelu_*_add_l1`` with the normalisation folded into the merge layer's weight and
bias, so the model takes this project's {0, 1} masks and gives Alpha-CLIP's image embedding.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import timm
import torch
from timm.models import vision_transformer

from .local import save_model
from .original import read_state_dict

ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
# (width, patch size, blocks, grid side) of the released towers -> the timm backbone that computes them.
ARCHITECTURES: dict[tuple[int, int, int, int], tuple[str, str]] = {
    (768, 16, 12, 14): ("vit_base_patch16_clip_quickgelu_224", "ViT-B/16"),
    (1024, 14, 24, 16): ("vit_large_patch14_clip_quickgelu_224", "ViT-L/14"),
    (1024, 14, 24, 24): ("vit_large_patch14_clip_quickgelu_336", "ViT-L/14@336px"),
}
# The visual tower's tensors in Alpha-CLIP's layout (OpenAI CLIP's, with in_proj.weight for in_proj_weight).
TOWER_KEY = re.compile(
    r"^(conv1(_alpha)?\.weight|class_embedding|positional_embedding|proj|ln_(pre|post)\.(weight|bias)"
    r"|transformer\.resblocks\.\d+\.(ln_[12]\.(weight|bias)|attn\.(in_proj[._](weight|bias)|out_proj\.(weight|bias))"
    r"|mlp\.c_(fc|proj)\.(weight|bias)))$"
)
WEIGHTS_LICENSE = "cc-by-nc-4.0"
ALPHA_CLIP_URL = "https://github.com/SunzeY/AlphaCLIP"
SOURCE_NOTE = "converted from Alpha-CLIP's checkpoint "
CITATION = """@inproceedings{sun2024alphaclip,
  title={Alpha-CLIP: A CLIP Model Focusing on Wherever You Want},
  author={Sun, Zeyi and Fang, Ye and Wu, Tong and Zhang, Pan and Zang, Yuhang and Kong, Shu and Xiong, Yuanjun and
          Lin, Dahua and Wang, Jiaqi},
  booktitle={CVPR},
  year={2024}
}"""


def alpha_clip_tower(state: dict[str, torch.Tensor], source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The visual tower of an Alpha-CLIP checkpoint (``module.`` prefixes removed), or a ``ValueError`` naming what
    is not one: LoRA weights not merged, a whole CLIP model, another layout."""
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    lora = sorted(key for key in state if "lora_" in key)
    if lora:
        raise ValueError(
            f"{source} holds LoRA weights not merged into the tower ({', '.join(lora[:3])}, ...): merge them first "
            "(loralib's merged weights, model.eval()) and save model.visual.state_dict()"
        )
    if any(key.startswith("visual.") for key in state) or "token_embedding.weight" in state:
        keys = [key for key in state if key.startswith(("visual.", "token_embedding", "text_projection"))][:3]
        raise ValueError(
            f"{source} is a whole CLIP model ({', '.join(keys)}, ...), not Alpha-CLIP's visual tower: save "
            "model.visual.state_dict() (the checkpoints of Alpha-CLIP's model zoo are that)"
        )
    unknown = sorted(key for key in state if not TOWER_KEY.match(key))
    required = ("conv1.weight", "conv1_alpha.weight", "class_embedding", "positional_embedding", "proj")
    missing = [key for key in required if key not in state]
    if unknown or missing:
        problems = [f"unknown tensors {', '.join(unknown[:5])}"] if unknown else []
        problems += [f"no {', '.join(missing)}"] if missing else []
        raise ValueError(f"{source} is not an Alpha-CLIP visual tower in OpenAI CLIP's layout: {'; '.join(problems)}")
    return state


def architecture_of(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """``(timm backbone, Alpha-CLIP's name)`` of a tower, from its tensors' shapes."""
    width, channels, patch, _ = state["conv1.weight"].shape
    blocks = len({key.split(".")[2] for key in state if key.startswith("transformer.resblocks.")})
    grid = math.isqrt(state["positional_embedding"].shape[0] - 1)
    key = (int(width), int(patch), blocks, grid)
    if key not in ARCHITECTURES or channels != 3:
        known = ", ".join(
            f"{name} (width {w}, patch {p}, {b} blocks, {g}x{g} patches)"
            for (w, p, b, g), (_, name) in ARCHITECTURES.items()
        )
        raise ValueError(
            f"a tower of width {width}, patch {patch}, {blocks} blocks and {grid}x{grid} patches is none of "
            f"Alpha-CLIP's released architectures: {known}"
        )
    return ARCHITECTURES[key]


def convert_alpha_clip(checkpoint: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert an Alpha-CLIP checkpoint (its visual tower, ``.pth``) into a folder at ``out`` that
    ``timm.create_model("local-dir:OUT", pretrained=True)`` loads as ``roi_vit_*_clip_quickgelu_*_add_l1``.

    The file is opened only with ``torch.load(weights_only=True)``. The model takes {0, 1} masks (Alpha-CLIP's
    normalisation is folded into the merge layer) and, without a text head (``add_text_head``), gives Alpha-CLIP's
    image embedding; an image alone is Alpha-CLIP's all-ones alpha.
    """
    checkpoint = Path(checkpoint)
    tower = alpha_clip_tower(read_state_dict(checkpoint), str(checkpoint))
    backbone, alpha_name = architecture_of(tower)
    embed_dim = int(tower["proj"].shape[1])
    name = f"roi_{backbone}_add_l1"
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=embed_dim)
    openai = {
        f"visual.{key.replace('.attn.in_proj.', '.attn.in_proj_')}": value.float()
        for key, value in tower.items()
        if key != "conv1_alpha.weight"
    }
    weights = {f"backbone.{k}": v for k, v in vision_transformer.checkpoint_filter_fn(openai, model.backbone).items()}
    alpha = tower["conv1_alpha.weight"].float()
    # conv1_alpha((m - mean) / std) = (W / std) * m - (mean / std) * sum(W): a conv of the {0, 1} mask with a bias.
    weights["roi_branch.patch_embed.weight"] = alpha / ALPHA_STD
    weights["roi_branch.patch_embed.bias"] = -(ALPHA_MEAN / ALPHA_STD) * alpha.sum(dim=(1, 2, 3))
    model.load_state_dict(weights, strict=True, assign=True)
    model.pretrained_cfg = dict(
        model.pretrained_cfg,
        license=WEIGHTS_LICENSE,
        description=f"Alpha-CLIP {alpha_name} image tower converted from {checkpoint.name}; output: CLIP's image "
        "embedding (add a text head for class names: roi-attention text-head)",
        origin_url=ALPHA_CLIP_URL,
        notes=(
            f"{SOURCE_NOTE}{checkpoint.name}",
            "input: RGB normalised with OpenAI CLIP's mean and std, mask= in {0,1} (Alpha-CLIP's alpha "
            f"normalisation, mean {ALPHA_MEAN} std {ALPHA_STD}, is folded into roi_branch.patch_embed)",
            "mask_resize: max",
        ),
    )
    card = alpha_clip_card(name, alpha_name, checkpoint.name, embed_dim)
    return save_model(model, out, overwrite=overwrite, extra_files={"README.md": card})


def alpha_clip_card(name: str, alpha_name: str, source: str, embed_dim: int, classes: int = 0) -> str:
    """The model card of a converted Alpha-CLIP tower: where it came from, its licence, the authors' own figures."""
    head = (
        f"a text head over {classes} class names (CLIP text embeddings: `roi-attention text-head`)"
        if classes
        else f"no head: the output is Alpha-CLIP's {embed_dim}-d image embedding"
    )
    return f"""---
license: {WEIGHTS_LICENSE}
library_name: timm
tags:
- image-classification
- roi-attention
- alpha-clip
---
# {name}: Alpha-CLIP {alpha_name}, converted

Alpha-CLIP's {alpha_name} image tower (`{source}`), converted by `roi-attention convert-alpha-clip` into
`{name}`: an OpenAI CLIP Vision Transformer whose patch embedding gets a conv of the region mask added (the
paper's `add_l1`). It takes a photo normalised with OpenAI CLIP's mean and std and a {{0, 1}} mask (Alpha-CLIP's
alpha normalisation, mean {ALPHA_MEAN} and std {ALPHA_STD}, is folded into the merge layer); {head}.

```python
import roi_attention, timm
model = timm.create_model("local-dir:THIS_FOLDER", pretrained=True).eval()
output = model(image, mask=mask)  # image (B,3,H,W) normalised, mask (B,1,H,W) in {{0,1}}
output = model(image)  # an image alone: the whole photo is the region (Alpha-CLIP's all-ones alpha)
```

## Source and licence

- Weights: Alpha-CLIP's model zoo (github.com/SunzeY/AlphaCLIP), released for research use only (their
  README: data and checkpoints under CC BY-NC 4.0; the code under Apache-2.0). The image tower starts from OpenAI's
  CLIP (its own terms apply).
- The conversion was checked numerically against an independent reference (open_clip's OpenAI-layout
  `VisionTransformer` with the alpha conv added, random weights): equal image embeddings within 1e-4. Its accuracy
  with these weights was not measured by roi-attention.

## The authors' figures (theirs, not measured here)

Zero-shot ImageNet-S top-1 with the object's mask as alpha: 68.89% for ViT-B/16 (+2.41 over CLIP) and 77.41% for
ViT-L/14 (+3.93); for ViT-L/14, 73.37% with the whole image as alpha and 75.62% with a box. The authors note weaker
focus on very small regions; inference is float32.

## Citation

```bibtex
{CITATION}
```
"""
