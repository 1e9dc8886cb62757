"""timm's own recipes work on ROI models: its transform on a photo, and its benchmark's random packed input."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from roi_attention.data.transforms import prepare_regions
from roi_attention.examples import COFFEE_REGIONS, polygon_mask

from .conftest import make_model

skimage_data = pytest.importorskip("skimage.data")


@pytest.mark.parametrize("name", ["roi_resnet18_add_l1", "roi_tf_efficientnet_lite0_mul_l3"])
@pytest.mark.parametrize("photo_name", ["coffee", "rocket", "astronaut"])
def test_timms_transform_gives_the_image_prepare_regions_gives(name, photo_name):
    model = make_model(name)
    config = timm.data.resolve_model_data_config(model)
    photo = getattr(skimage_data, photo_name)()
    image = timm.data.create_transform(**config)(Image.fromarray(photo))  # timm's snippet, unchanged
    mask = polygon_mask(COFFEE_REGIONS["cup"], (photo.shape[1], photo.shape[0]))
    packed = prepare_regions(photo, [mask], config)
    assert image.shape == (3, *packed.shape[-2:])
    # The same geometry and values: they differ by one 8-bit level at most (PIL's and torchvision's rounding).
    one_level = 1 / 255 / min(config["std"])
    assert (image - packed[0, :3]).abs().max() <= 1.01 * one_level
    with torch.no_grad():
        from_timm, from_packed = model(image[None], mask=packed[:, 3:]), model(packed)
    assert (from_timm - from_packed).abs().max() <= 0.01 * from_packed.abs().max()


def test_no_region_is_cropped_away_by_timms_transform():
    model = make_model("roi_resnet18_add_l1")
    config = timm.data.resolve_model_data_config(model)
    photo = skimage_data.coffee()  # 600x400: a centre crop would cut 100 px off each side
    marked = photo.copy()
    marked[:, :20] = (255, 0, 0)  # a red band at the left edge
    image = timm.data.create_transform(**config)(Image.fromarray(marked))
    red = image[0] * config["std"][0] + config["mean"][0]
    assert (red > 0.95).any(dim=0).nonzero().min() < 20  # the left edge is still there


def test_timms_benchmark_input_runs_with_in_chans_4_and_check_inputs_off_and_says_so_otherwise(tmp_path):
    # timm's benchmark.py: the model with --model-kwargs, its input torch.randn((batch,) + input_size) from timm's
    # own resolver for its scripts, which takes the channel count from the model.
    from timm.data.model_config import resolve_input_data_config

    default = make_model("roi_resnet18_mul_all")
    assert resolve_input_data_config(default)["input_size"][0] == 3  # the photo; the mask comes with mask=
    with pytest.raises(ValueError, match="without a mask"), torch.no_grad():
        default(torch.randn(2, 3, 64, 64))
    packed = make_model("roi_resnet18_mul_all", in_chans=4)
    config = resolve_input_data_config(packed)
    assert config["input_size"][0] == 4 and config["mean"][3] == 0.0 and config["std"][3] == 1.0
    random_input = torch.randn((2, *config["input_size"]))
    with pytest.raises(ValueError, match="check_inputs=False"), torch.no_grad():
        packed(random_input)
    fast = make_model("roi_resnet18_mul_all", in_chans=4, check_inputs=False)
    with torch.no_grad():
        logits = fast(random_input)
    assert logits.shape == (2, fast.num_classes) and np.isfinite(logits.numpy()).all()
    # Saved and loaded again, the packed model still describes the packed input; the default one the photo.
    from roi_attention.hub import save_model

    for model, channels in ((packed, 4), (default, 3)):
        folder = save_model(model, tmp_path / str(channels))
        reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        assert reloaded.in_chans == channels
        assert len(timm.data.resolve_model_data_config(reloaded)["mean"]) == channels
