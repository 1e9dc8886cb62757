"""Classes by name: a CLIP text head for an ROI model on an OpenAI CLIP image tower (an Alpha-CLIP conversion).

The class names are embedded by the matching OpenAI CLIP text tower through ``open_clip`` (pip install
'roi-attention[clip]'), each averaged over the prompt templates of CLIP's zero-shot ImageNet evaluation, as
``open_clip.build_zero_shot_classifier`` does. The head (``CosineClassifier``) holds the normalised text
embeddings times CLIP's logit scale and is applied to the normalised image embedding: CLIP's zero-shot logits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from timm.models._input import update_model_args

from ..labels import read_class_names
from ..layers.head import CosineClassifier
from .alpha_clip import ARCHITECTURES, SOURCE_NOTE, alpha_clip_card
from .load import load_model
from .local import CONFIG_NAME, WEIGHTS_NAME, save_model

# The timm CLIP towers and the open_clip models whose text towers match them.
OPEN_CLIP_MODELS: dict[str, str] = {
    "vit_base_patch16_clip_quickgelu_224": "ViT-B-16-quickgelu",
    "vit_large_patch14_clip_quickgelu_224": "ViT-L-14-quickgelu",
    "vit_large_patch14_clip_quickgelu_336": "ViT-L-14-336-quickgelu",
    "vit_base_patch16_clip_224": "ViT-B-16",
    "vit_large_patch14_clip_224": "ViT-L-14",
    "vit_large_patch14_clip_336": "ViT-L-14-336",
}


def _open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "class names need CLIP's text tower from open_clip: pip install open-clip-torch "
            "(or pip install 'roi-attention[clip]')"
        ) from error
    return open_clip


def class_names(spec: str) -> list[str]:
    """``imagenet`` (CLIP's ImageNet class names), ``coco``, ``opensurfaces`` or a text file of one name per line."""
    if spec == "imagenet":
        return list(_open_clip().IMAGENET_CLASSNAMES)
    return read_class_names(spec)


def text_head_weights(
    backbone: str,
    names: Sequence[str],
    text_weights: str = "openai",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """``(class embeddings (K, D) times the logit scale, the logit scale)`` from the open_clip text tower that
    matches ``backbone``, its weights from open_clip's ``text_weights`` tag or a local checkpoint file."""
    if backbone not in OPEN_CLIP_MODELS:
        raise ValueError(
            f"a text head needs an OpenAI CLIP image tower ({', '.join(OPEN_CLIP_MODELS)}); this model is on {backbone}"
        )
    open_clip = _open_clip()
    name = OPEN_CLIP_MODELS[backbone]
    if text_weights != "openai" and not Path(text_weights).is_file():
        raise FileNotFoundError(
            f"--text-weights is 'openai' or an open_clip checkpoint file; {text_weights} is neither"
        )
    clip = open_clip.create_model(name, pretrained=text_weights, device=device).eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        embeddings = open_clip.build_zero_shot_classifier(
            clip,
            tokenizer,
            list(names),
            open_clip.OPENAI_IMAGENET_TEMPLATES,
            num_classes_per_batch=10,
            device=device,
            use_tqdm=progress,
        )
        scale = float(clip.logit_scale.exp())
    return embeddings.T.float().cpu() * scale, scale


def add_text_head(
    model: str | os.PathLike,
    classes: str | Sequence[str],
    out: str | os.PathLike | None = None,
    text_weights: str = "openai",
    progress: bool = False,
) -> Path:
    """Give a saved CLIP-tower ROI model (a folder, e.g. from ``convert_alpha_clip``) a head over class names and
    write it to ``out`` (default: the folder itself, replaced whole): its logits are then CLIP's zero-shot logits
    of the region, its label names the classes. A head it had is replaced; the image tower is kept as it is."""
    folder = Path(model)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}: a text head goes into a saved model folder")
    names = class_names(classes) if isinstance(classes, str) else list(classes)
    roi = load_model(str(folder))
    embed_dim = roi.text_head.in_features if roi.text_head is not None else roi.backbone.num_classes
    weights, _ = text_head_weights(roi.backbone_name, names, text_weights, progress=progress)
    if weights.shape[1] != embed_dim:
        raise ValueError(
            f"the model gives {embed_dim}-d outputs, the CLIP text tower {weights.shape[1]}-d embeddings: only a CLIP "
            "tower with its projection head (as converted, without another classifier) takes a text head"
        )
    roi.text_head = CosineClassifier(embed_dim, len(names))
    with torch.no_grad():
        roi.text_head.weight.copy_(weights)
    roi.num_classes = len(names)
    update_model_args(roi, text_embed_dim=embed_dim)
    roi.pretrained_cfg = dict(roi.pretrained_cfg, classifier="text_head", num_classes=len(names), label_names=names)
    extra = {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in (CONFIG_NAME, WEIGHTS_NAME) and path.suffix in (".md", ".json", ".yaml")
    }
    notes = [note for note in roi.pretrained_cfg.get("notes") or () if note.startswith(SOURCE_NOTE)]
    source = notes[0][len(SOURCE_NOTE) :] if notes else None
    alpha_names = {backbone: alpha_name for backbone, alpha_name in ARCHITECTURES.values()}
    if source and roi.backbone_name in alpha_names:  # an Alpha-CLIP conversion: its card says what the head is
        name = f"roi_{roi.backbone_name}_{roi.variant_name}"
        extra["README.md"] = alpha_clip_card(name, alpha_names[roi.backbone_name], source, embed_dim, len(names))
    return save_model(roi, out if out is not None else folder, label_names=names, overwrite=True, extra_files=extra)
