"""Bad input gets a clear error naming what is wrong and what was expected."""

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roi_attention import RoiInputError
from roi_attention.layers import resize_mask, split_roi_input

from .conftest import make_model

MODEL = make_model("roi_resnet18_add_l1")


def _error(*args, **kwargs) -> str:
    with pytest.raises(RoiInputError) as info, torch.no_grad():
        MODEL(*args, **kwargs)
    return str(info.value)


def test_an_image_alone_makes_the_whole_photo_the_region():
    model = make_model("roi_resnet18_add_l1")
    with torch.no_grad():
        model.roi_branch["conv1"].weight.normal_()  # a trained side branch: the mask matters
        image = torch.randn(2, 3, 32, 32)
        alone = model(image)
        assert torch.equal(alone, model(image, mask=torch.ones(2, 1, 32, 32)))
        assert not torch.allclose(alone, model(image, mask=torch.zeros(2, 1, 32, 32)))


def test_other_channel_counts_say_what_is_expected():
    message = _error(torch.randn(2, 6, 32, 32))
    assert "got 6 channels" in message and "3-channel image" in message and "(B,4,H,W)" in message


def test_packed_input_with_a_mask_as_well():
    assert "either" in _error(torch.randn(2, 4, 32, 32), mask=torch.ones(2, 1, 32, 32))


def test_mask_batch_differs():
    message = _error(torch.randn(2, 3, 32, 32), mask=torch.ones(1, 1, 32, 32))
    assert "batch size 1" in message and "batch size 2" in message and "broadcast" in message


def test_mask_size_differs_says_both_sizes():
    message = _error(torch.randn(2, 3, 32, 32), mask=torch.ones(2, 1, 16, 24))
    assert "(16, 24)" in message and "(32, 32)" in message


def test_a_0_255_mask_is_named():
    message = _error(torch.randn(2, 3, 32, 32), mask=torch.full((2, 1, 32, 32), 255, dtype=torch.uint8))
    assert "0/255" in message and "[0, 1]" in message


def test_negative_mask_values():
    mask = torch.ones(2, 1, 32, 32)
    mask[0, 0, 0, 0] = -1
    assert "[-1, 1]" in _error(torch.randn(2, 3, 32, 32), mask=mask)


def test_nan_in_image_and_mask():
    image = torch.randn(2, 3, 32, 32)
    image[0, 0, 0, 0] = float("nan")
    assert "image holds 1 NaN" in _error(image, mask=torch.ones(2, 1, 32, 32))
    mask = torch.ones(2, 1, 32, 32)
    mask[1, 0, 3, 3] = float("nan")
    assert "mask holds 1 NaN" in _error(torch.randn(2, 3, 32, 32), mask=mask)


def test_wrong_number_of_dimensions():
    assert "add a batch dimension" in _error(torch.randn(4, 32, 32))
    assert "(B,1,H,W) or (B,H,W)" in _error(torch.randn(2, 3, 32, 32), mask=torch.ones(32, 32))
    assert "(B,1,H,W) or (B,H,W)" in _error(torch.randn(2, 3, 32, 32), mask=torch.ones(2, 2, 32, 32))


def test_integer_image():
    assert "floating-point" in _error(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))


def test_wrong_channel_counts():
    assert "got 5 channels" in _error(torch.randn(2, 5, 32, 32))
    assert "got 1 channels" in _error(torch.randn(2, 1, 32, 32), mask=torch.ones(2, 1, 32, 32))


def test_values_are_not_read_on_the_meta_device():
    with torch.device("meta"):
        model = timm.create_model("roi_resnet18_add_l1", num_classes=3).eval()
        assert model(torch.randn(1, 4, 32, 32)).shape == (1, 3)  # a random mask channel: no check there


def test_checks_can_be_turned_off_for_speed():
    model = make_model("roi_resnet18_add_l1", check_inputs=False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), mask=torch.full((1, 1, 32, 32), 255.0))
    with pytest.raises(RoiInputError):  # shapes are always checked
        model(torch.randn(1, 3, 32, 32), mask=torch.ones(1, 1, 16, 16))


def test_in_chans_is_the_images_channels_so_a_grey_photo_takes_a_mask():
    grey = make_model("roi_resnet18_add_l1", in_chans=1)
    assert grey.backbone.conv1.in_channels == 1 and grey.pretrained_cfg["input_size"][0] == 1
    assert len(grey.pretrained_cfg["mean"]) == 1
    image, mask = torch.randn(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(grey(image, mask=mask), grey(torch.cat([image, mask], 1)))
    with pytest.raises(ValueError, match="channel count"):
        make_model("roi_resnet18_add_l1", in_chans=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    mask_shape=st.sampled_from(["none", "b1hw", "bhw", "hw", "other_batch", "other_size", "two_channels"]),
    image_dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
    mask_dtype=st.sampled_from([torch.float32, torch.bool, torch.uint8, torch.int32]),
    mask_value=st.sampled_from([0, 1, 255, -3]),
)
def test_split_input_accepts_exactly_the_documented_forms(
    batch, channels, height, width, mask_shape, image_dtype, mask_dtype, mask_value
):
    x = torch.zeros(batch, channels, height, width).to(image_dtype)
    shapes = {
        "b1hw": (batch, 1, height, width),
        "bhw": (batch, height, width),
        "hw": (height, width),
        "other_batch": (batch + 1, 1, height, width),
        "other_size": (batch, 1, height + 1, width),
        "two_channels": (batch, 2, height, width),
    }
    mask = None if mask_shape == "none" else torch.full(shapes[mask_shape], mask_value).to(mask_dtype)
    if mask is None and channels == 4:
        x[:, 3] = mask_value
    effective_value = bool(mask_value) if mask_dtype == torch.bool else mask_value
    if mask is not None and mask_dtype == torch.uint8:
        effective_value = mask_value % 256
    if mask is None and channels == 3:
        effective_value = 1  # an image alone: the whole photo is the region
    valid = (
        image_dtype.is_floating_point
        and ((mask is None and channels in (3, 4)) or (channels == 3 and mask_shape in ("b1hw", "bhw")))
        and 0 <= effective_value <= 1
    )
    if valid:
        image, out_mask = split_roi_input(x, mask)
        assert image.shape == (batch, 3, height, width)
        assert out_mask.shape == (batch, 1, height, width)
        assert out_mask.dtype == x.dtype
        assert torch.all(out_mask == effective_value)
    else:
        with pytest.raises(RoiInputError):
            split_roi_input(x, mask)


@pytest.mark.parametrize("stride", [2, 3, 4, 8, 16, 32])
@pytest.mark.parametrize("mode", ["max", "area"])
def test_resize_keeps_a_single_pixel_at_any_stride(stride, mode):
    size = 97  # divides by none of the strides
    out = (-(-size // stride), -(-size // stride))
    for y, x in [(0, 0), (96, 96), (50, 13)]:
        mask = torch.zeros(1, 1, size, size)
        mask[..., y, x] = 1
        resized = resize_mask(mask, out, mode)
        assert resized.shape[-2:] == out
        assert resized.sum() > 0
        if mode == "max":
            assert resized.amax() == 1


WHOLE_FACTORS = [((2, 1, 224, 224), (112, 112)), ((3, 1, 96, 64), (12, 8)), ((1, 1, 64, 48), (2, 1))]


@pytest.mark.parametrize("shape, size", WHOLE_FACTORS)
def test_max_resize_by_a_whole_factor_is_adaptive_max_pooling(shape, size):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0))  # soft values: any cell's maximum counts
    assert torch.equal(resize_mask(mask, size, "max"), F.adaptive_max_pool2d(mask, size))
    assert torch.equal(resize_mask(mask.to(torch.bfloat16), size, "max"), F.adaptive_max_pool2d(mask, size).bfloat16())


def test_bilinear_resize_loses_a_small_roi_as_the_author_noted():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 5, 5] = 1
    assert resize_mask(mask, (2, 2), "bilinear").sum() == 0
    assert resize_mask(mask, (2, 2), "max").sum() == 1
