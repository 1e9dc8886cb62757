"""Converting the paper author's checkpoints: same predictions as the original on the same photo."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
from skimage import data

from roi_attention.cli import main
from roi_attention.hub import convert_original_checkpoint, load_model

from .author_reference import AuthorNet, randomized

# (variant, merge, at, Attentionlayer layout, channel order the original takes)
CASES = [
    ("add_l1", "add", "l1", True, "bgr"),  # the 2022 COCO model
    ("add_l1", "add", "l1", False, "rgb"),
    ("mul_l1", "mul", "l1", False, "rgb"),
    ("add_l3", "add", "l3", False, "rgb"),
    ("mul_l3", "mul", "l3", False, "rgb"),
    ("add_all", "add", "all", False, "rgb"),
    ("mul_all", "mul", "all", False, "rgb"),
    ("blackout_image", "gate", "image", False, "rgb"),
    ("blackout_l1", "gate", "l1", False, "rgb"),
]


def photo_and_mask(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    photo = np.asarray(
        torch.nn.functional.interpolate(
            torch.from_numpy(data.coffee()).permute(2, 0, 1)[None].float(), size=(size, size), mode="area"
        )[0]
        .permute(1, 2, 0)
        .round()
        .byte()
    )
    mask = np.zeros((size, size), np.uint8)
    mask[20:60, 30:80] = 1
    return photo, mask


@pytest.mark.parametrize(("variant", "merge", "at", "attention_layer", "order"), CASES)
def test_a_converted_checkpoint_predicts_what_the_original_predicts(
    tmp_path, variant, merge, at, attention_layer, order
):
    original = randomized(AuthorNet(5, merge, at, attention_layer), seed=len(variant) + attention_layer).eval()
    checkpoint = tmp_path / "original.torch"
    torch.save(original.state_dict(), checkpoint)  # the author's format: a pickled state dict
    folder = convert_original_checkpoint(checkpoint, variant, 5, tmp_path / "converted", label_names=list("abcde"))

    photo, mask = photo_and_mask()
    pixels = torch.from_numpy(photo).permute(2, 0, 1).float()[None]
    roi = torch.from_numpy(mask).float()[None, None]
    with torch.no_grad():
        expected = original(pixels.flip(1) if order == "bgr" else pixels, roi)
    # The converted model through its own config (mean, std) and timm's data config, given RGB pixels in [0, 1].
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    config = timm.data.resolve_data_config({}, model=model)
    mean = torch.tensor(config["mean"][:3]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"][:3]).view(1, 3, 1, 1)
    with torch.no_grad():
        converted = model((pixels / 255 - mean) / std, mask=roi)
    assert expected.abs().max() > 1e-3 and expected.std() > 1e-4  # the comparison can tell weights apart
    torch.testing.assert_close(converted, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert load_model(str(folder)).pretrained_cfg["label_names"] == list("abcde")


def test_the_converter_says_what_does_not_fit(tmp_path):
    original = AuthorNet(5, "add", "l3", attention_layer=False)
    checkpoint = tmp_path / "original.torch"
    torch.save(original.state_dict(), checkpoint)
    with pytest.raises(
        ValueError, match=r"do not fit resnet50 with variant add_l1: 2 misshapen .*roi_branch.conv1.weight \(1024"
    ):
        convert_original_checkpoint(checkpoint, "add_l1", 5, tmp_path / "a")  # its conv has 1024 channels, not 64
    torch.save(AuthorNet(5, "add", "all").state_dict(), tmp_path / "all.torch")
    with pytest.raises(ValueError, match=r"variant add_l1 merges the mask at 1 point\(s\) \(conv1\), the checkpoint"):
        convert_original_checkpoint(tmp_path / "all.torch", "add_l1", 5, tmp_path / "a")
    with pytest.raises(ValueError, match="the checkpoint's classifier has 5 outputs; --num-classes is 80"):
        convert_original_checkpoint(checkpoint, "add_l3", 80, tmp_path / "b")
    with pytest.raises(ValueError, match="variants"):
        convert_original_checkpoint(checkpoint, "crop", 5, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    # A pickle with code in it is refused by weights_only=True, and nothing runs.
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    evil = tmp_path / "evil.torch"
    evil.write_bytes(pickle.dumps({"Net.fc.weight": Payload()}))
    assert (
        main(
            [
                "convert-original",
                "--checkpoint",
                str(evil),
                "--variant",
                "add_l1",
                "--num-classes",
                "5",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "d").exists()
