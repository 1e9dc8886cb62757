"""Alpha-CLIP's checkpoints converted, against an independent reference: open_clip's OpenAI-layout CLIP tower
with Alpha-CLIP's alpha conv added to its patch embedding (random weights: the real ones are not reachable here),
and classes by name against open_clip's own text tower."""

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from roi_attention.hub.alpha_clip import ALPHA_MEAN, ALPHA_STD, convert_alpha_clip
from roi_attention.hub.clip_text import add_text_head

open_clip = pytest.importorskip("open_clip")

SIZE = 224


def _clip(name: str, seed: int = 0):
    """An open_clip CLIP with random weights (no constant tensor: layer norms and biases drawn too), its
    tower in Alpha-CLIP's layout with an alpha conv, and the alpha conv's weight."""
    torch.manual_seed(seed)
    clip = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
        for parameter in clip.visual.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    patch = clip.visual.conv1.kernel_size[0]
    alpha = 0.05 * torch.randn(clip.visual.conv1.out_channels, 1, patch, patch)
    tower = {k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in clip.visual.state_dict().items()}
    tower["conv1_alpha.weight"] = alpha
    return clip, tower, alpha


def reference_embedding(clip, alpha_weight, image, mask):
    """Alpha-CLIP's image embedding computed by open_clip's tower: conv1(x) + conv1_alpha((mask - 0.5) / 0.26)."""
    alpha = (mask - ALPHA_MEAN) / ALPHA_STD
    stride = clip.visual.conv1.stride
    handle = clip.visual.conv1.register_forward_hook(
        lambda m, a, out: out + F.conv2d(alpha, alpha_weight, stride=stride)
    )
    try:
        with torch.no_grad():
            return clip.encode_image(image)
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def b16(tmp_path_factory):
    root = tmp_path_factory.mktemp("alpha-clip")
    clip, tower, alpha = _clip("ViT-B-16-quickgelu")
    checkpoint = root / "clip_b16_grit20m_fultune_2xe.pth"
    torch.save(tower, checkpoint)
    folder = convert_alpha_clip(checkpoint, root / "converted")
    return clip, alpha, checkpoint, folder


def _masks(batch: int = 2) -> dict[str, torch.Tensor]:
    masks = {name: torch.zeros(batch, 1, SIZE, SIZE) for name in ("box", "one pixel", "empty")}
    masks["box"][..., 30:120, 50:200] = 1
    masks["one pixel"][..., 100, 37] = 1
    masks["whole photo"] = torch.ones(batch, 1, SIZE, SIZE)
    masks["scattered"] = (torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    return masks


def test_a_converted_b16_gives_alpha_clips_embedding_for_every_kind_of_mask(b16):
    clip, alpha, _, folder = b16
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(model).__name__ == "RoiAttentionNet" and model.variant_name == "add_l1"
    assert model.backbone_name == "vit_base_patch16_clip_quickgelu_224" and model.num_classes == 512
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name, mask in _masks().items():
            ours, theirs = model(image, mask=mask), reference_embedding(clip, alpha, image, mask)
            assert ((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4, name
        # an image alone is Alpha-CLIP's all-ones alpha
        whole = reference_embedding(clip, alpha, image, torch.ones(2, 1, SIZE, SIZE))
        assert ((model(image) - whole).abs().max() / whole.abs().max()) < 1e-4
        # and the alpha matters: the box and the whole photo differ by far more than the tolerance
        box = reference_embedding(clip, alpha, image, _masks()["box"])
        assert (box - whole).abs().max() > 1e-2 * whole.abs().max()


def test_the_folder_is_safetensors_with_a_card_that_names_its_source_and_licence(b16):
    _, _, checkpoint, folder = b16
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "roi_vit_base_patch16_clip_quickgelu_224_add_l1"
    card = (folder / "README.md").read_text()
    for expected in (checkpoint.name, "cc-by-nc-4.0", "@inproceedings{sun2024alphaclip", "68.89", "theirs"):
        assert expected in card


def test_module_prefixed_keys_convert_and_foreign_files_are_refused_by_name(b16, tmp_path):
    _, _, checkpoint, folder = b16
    tower = torch.load(checkpoint, weights_only=True)
    prefixed = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in tower.items()}, prefixed)
    converted = timm.create_model(f"local-dir:{convert_alpha_clip(prefixed, tmp_path / 'ddp')}", pretrained=True)
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert all(
        torch.equal(a, b) for a, b in zip(converted.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    cases = {
        "lora": ({**tower, "transformer.resblocks.0.attn.in_proj.lora_A": torch.zeros(16, 768)}, "LoRA weights"),
        "whole": (
            {f"visual.{k}": v for k, v in tower.items()} | {"token_embedding.weight": torch.zeros(1)},
            "whole CLIP",
        ),
        "foreign": ({**tower, "head.fc.weight": torch.zeros(2)}, "unknown tensors head.fc.weight"),
        "no alpha": ({k: v for k, v in tower.items() if k != "conv1_alpha.weight"}, "no conv1_alpha.weight"),
        "resnet": ({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "no conv1_alpha.weight, class_embedding"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(state, path)
        with pytest.raises(ValueError, match=message):
            convert_alpha_clip(path, tmp_path / f"out_{name}")
        assert not (tmp_path / f"out_{name}").exists()
    smaller = {k: v for k, v in tower.items() if not k.startswith("transformer.resblocks.11.")}
    torch.save(smaller, tmp_path / "eleven.pth")
    with pytest.raises(ValueError, match=r"11 blocks .* none of Alpha-CLIP's released architectures"):
        convert_alpha_clip(tmp_path / "eleven.pth", tmp_path / "out")
    (tmp_path / "pickle.pth").write_bytes(b"\x80\x04\x95not a state dict")
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_alpha_clip(tmp_path / "pickle.pth", tmp_path / "out")


CLASSES = ["cat", "coffee mug", "rocket"]  # each name is 80 prompts through the text tower


@pytest.fixture(scope="module")
def named(b16, tmp_path_factory):
    """The converted tower with a text head over CLASSES, from the reference CLIP's own text tower."""
    clip, _, _, folder = b16
    root = tmp_path_factory.mktemp("named")
    weights = root / "clip.safetensors"  # the full CLIP, as open_clip loads a local checkpoint
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return add_text_head(folder, str(root / "classes.txt"), out=root / "named", text_weights=str(weights))


def test_classes_by_name_give_clips_zero_shot_logits_of_the_region(b16, named):
    clip, alpha, _, _ = b16
    classes = CLASSES
    model = timm.create_model(f"local-dir:{named}", pretrained=True).eval()
    assert model.num_classes == len(classes) and model.pretrained_cfg["label_names"] == classes
    # Independently: each class's prompts through open_clip's text tower, normalised, averaged, normalised.
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    with torch.no_grad():
        rows = []
        for name in classes:
            text = clip.encode_text(tokenizer([template(name) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]))
            mean = F.normalize(text, dim=-1).mean(0)
            rows.append(mean / mean.norm())
        text = torch.stack(rows)
        image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
        mask = _masks()["box"]
        embedding = reference_embedding(clip, alpha, image, mask)
        expected = clip.logit_scale.exp() * F.normalize(embedding, dim=-1) @ text.T
        torch.testing.assert_close(model(image, mask=mask), expected, atol=1e-4, rtol=1e-4)
    card = (named / "README.md").read_text()
    assert f"a text head over {len(classes)} class names" in card


def test_the_app_and_its_runtimes_answer_with_the_class_names(named, tmp_path):
    from PIL import Image
    from skimage import data

    from roi_attention.app import classify, load_app_models
    from roi_attention.hub.publish import check_model_folder
    from roi_attention.predict import predict_regions
    from roi_attention.serving import ServingOptions

    assert check_model_folder(named)["architecture"] == "roi_vit_base_patch16_clip_quickgelu_224_add_l1"  # push's check
    photo = data.chelsea()
    Image.fromarray(photo).save(tmp_path / "chelsea.png")
    masks = [np.zeros(photo.shape[:2], np.uint8) for _ in range(2)]
    masks[0][40:200, 100:300], masks[1][200:290, 0:150] = 1, 1
    for index, mask in enumerate(masks):
        Image.fromarray(mask * 255).save(tmp_path / f"mask{index}.png")
    files = [str(tmp_path / f"mask{index}.png") for index in range(2)]
    for runtime in ("eager", "onnxruntime"):
        models, message = load_app_models([f"alpha={named}"], ServingOptions(runtime=runtime))
        assert message is None
        _, _, answers = classify(models, dict(background=str(tmp_path / "chelsea.png"), layers=[]), files, ["alpha"])
        expected = predict_regions(models["alpha"].model, photo, masks, topk=len(CLASSES))  # eager
        assert [[t["label"] for t in a["top"]] for a in answers] == [[p["label"] for p in e] for e in expected]
        assert sorted(t["label"] for t in answers[0]["top"]) == sorted(CLASSES)
        assert answers[1]["top"][0]["probability"] == pytest.approx(expected[1][0]["probability"], abs=1e-4)


@pytest.mark.slow
def test_the_commands_convert_name_and_predict(b16, tmp_path):
    """From Alpha-CLIP's file to a region classifier with the commands a user runs, and predict on a real photo."""
    from PIL import Image
    from skimage import data

    clip, _, checkpoint, _ = b16
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    (tmp_path / "cat.json").write_text("[[100, 50, 350, 50, 350, 280, 100, 280]]")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "roi_attention.cli", *args], capture_output=True, text=True)

    out = tmp_path / "model"
    assert run("convert-alpha-clip", str(checkpoint), "--out", str(out)).returncode == 0
    refused = run("convert-alpha-clip", str(checkpoint), "--out", str(out))
    assert refused.returncode == 2 and "exists" in refused.stderr
    classes = ["cat", "dog", "car"]  # a few: each name is 80 prompts through the text tower
    (tmp_path / "classes.txt").write_text("\n".join(classes))
    done = run(
        "text-head", "--model", str(out), "--classes", str(tmp_path / "classes.txt"), "--text-weights", str(weights)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = run(
        "predict",
        "--model",
        str(out),
        "--image",
        str(tmp_path / "chelsea.png"),
        "--mask",
        str(tmp_path / "cat.json"),
        "--json",
        "--topk",
        "3",
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    answer = json.loads(predicted.stdout)
    labels = [p["label"] for p in answer[0]["predictions"]] if isinstance(answer, list) else None
    assert labels and all(
        label in timm.models.get_pretrained_cfg("roi_resnet50_add_l1.coco").label_names for label in labels
    )
    missing = run("text-head", "--model", str(out), "--classes", str(tmp_path / "none.txt"))
    assert missing.returncode == 2 and "neither" in missing.stderr
