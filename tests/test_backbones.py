"""Where the mask merges, checked on timm CNN families against the plain backbone with hooks of the test's own.

Each family either wires right for each kind of merge point (the model merges exactly where a hook on the plain
backbone adds the same attention map; a one-pixel ROI changes the output at every merge point; no point twice;
``all`` at every stage that a conv separates from the stem) or is refused with ``WiringError`` when it is built.
"""

import pytest
import timm
import torch

from roi_attention.layers import resize_mask
from roi_attention.models import BACKBONES, RoiAttentionNet, WiringError
from roi_attention.models.walk import _randomise, resolve_walk

from .conftest import HEAVY_BACKBONES, TOKEN_BACKBONES, tiered_backbones

SIZE = 96  # inception_v3 needs more than 75 pixels
# Small members of timm CNN families beyond the registry's; the expected refusals say why they cannot take the mask.
FAMILIES = {
    "vgg11": {},
    "densenet121": {},
    "resnext26ts": {},
    "seresnet18": {},
    "ghostnet_050": {},
    "repvgg_a0": {"l1": "parallel convs", "all": "parallel convs"},
    "hrnet_w18_small": {"l1": "not a sequence", "l3": "not a sequence", "all": "not a module"},
    "dla34": {},
    "cspresnet50": {},
    "rexnet_100": {},
    "dpn48b": {},
    "xception41": {"l3": "not a sequence", "all": "not a sequence"},
    "inception_v3": {},
    "res2net50_14w_8s": {},
    "selecsls42b": {"l1": "not a feature map", "l3": "not a feature map", "all": "not a feature map"},
    "nf_resnet26": {},
    "resnetv2_50": {},
    "ese_vovnet19b_dw": {},
    "hgnetv2_b0": {"l1": "not a sequence", "all": "not a sequence"},
    "lcnet_050": {},
    "mobilenetv4_conv_small": {},
    "legacy_seresnet18": {},
    "resnet50d": {},
    "mobilenetv3_small_050": {},
    "efficientnet_b0": {},
    "regnety_002": {},
}


def _check_wiring(backbone: str, at: str) -> None:
    torch.manual_seed(0)
    size = {"img_size": SIZE} if backbone in TOKEN_BACKBONES else {}
    model = RoiAttentionNet(backbone, f"add_{at}", num_classes=3, check_inputs=False, **size)
    model.eval()
    _randomise(model.backbone)  # no zero-initialised gamma makes a block an identity that hides a misplaced merge
    with torch.device("meta"):  # its own module tree, the model's weights (copied)
        plain = timm.create_model(backbone, num_classes=3, **size).eval()
    plain.load_state_dict({key: value.clone() for key, value in model.backbone.state_dict().items()}, assign=True)
    points = model.merge_points
    assert points and len({name for name, _ in points}) == len(points), "a merge point twice"
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pixel = torch.zeros(1, 1, SIZE, SIZE)
    pixel[..., 61, 29] = 1  # one pixel, off the stride grid
    generator = torch.Generator().manual_seed(2)
    for name, _ in points:
        layer = model.roi_branch[name.replace(".", "_")]
        with torch.no_grad():
            for other in model.roi_branch.values():
                other.reset_parameters()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
            got = model.forward_features(image, mask=pixel)
            empty = model.forward_features(image, mask=torch.zeros_like(pixel))

            def add_attention(module, args, output, layer=layer):
                if backbone in TOKEN_BACKBONES:  # the attention tokens of the full-resolution mask
                    return output + layer.attention(pixel)
                return output + layer.attention(resize_mask(pixel, output.shape[-2:], "max"))

            handle = plain.get_submodule(name).register_forward_hook(add_attention)
            expected = plain.forward_features(image)
            handle.remove()
        assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max(), rtol=1e-4), (
            f"{backbone} {at}: not merged after {name}"
        )
        assert not torch.equal(got, empty), f"{backbone} {at}: the pixel vanished at {name}"
    if at == "all" and backbone not in TOKEN_BACKBONES:  # a ViT's blocks: tests/test_vit.py
        _check_every_stage_is_merged(plain, [name for name, _ in points])


def _check_every_stage_is_merged(plain: torch.nn.Module, points: list[str]) -> None:
    """Each feature_info stage is a merge point (or ends at one) unless no conv runs between the stem and it."""
    order, handles = [], []
    for name, module in plain.named_modules():
        if isinstance(module, torch.nn.Conv2d) or name in [info["module"] for info in plain.feature_info]:
            handles.append(module.register_forward_hook(lambda *args, name=name: order.append(name)))
    with torch.no_grad():
        plain(torch.randn(1, 3, SIZE, SIZE))
    for handle in handles:
        handle.remove()
    convs = {name for name, module in plain.named_modules() if isinstance(module, torch.nn.Conv2d)}
    stem = order.index(points[0])
    for info in plain.feature_info:
        stage = info["module"]
        merged = any(point == stage or point.startswith(stage + ".") for point in points)
        convs_after_stem = [name for name in order[stem + 1 : order.index(stage)] if name in convs]
        assert merged or not convs_after_stem, f"stage {stage} has no merge point, {convs_after_stem[:2]} ran before it"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_timm_cnn_families_are_wired_right_or_refused(backbone):
    for at in ("l1", "l3", "all"):
        refusal = FAMILIES[backbone].get(at)
        if refusal:
            with pytest.raises(WiringError, match=refusal):
                RoiAttentionNet(backbone, f"add_{at}", num_classes=3)
        else:
            _check_wiring(backbone, at)


@pytest.mark.parametrize("backbone", tiered_backbones(list(BACKBONES)))
def test_every_registry_backbone_is_wired_right(backbone):
    # A ViT-L's 25 merge points of `all` are ViT-B's 13 in a longer loop (and its walk is verified by value)
    for at in ("l1", "l3") if backbone in HEAVY_BACKBONES else ("l1", "l3", "all"):
        _check_wiring(backbone, at)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_a_model_built_on_the_meta_device_reuses_the_walk_derived_on_the_cpu(backbone):
    for at in ("l1", "l3", "all"):
        with torch.device("meta"):
            meta = RoiAttentionNet(backbone, f"mul_{at}", num_classes=3)
        assert next(meta.parameters()).device.type == "meta"
        # one verification, by value on the CPU, whatever the device the model is built on
        walk = resolve_walk(backbone, at, dict(in_chans=3))
        assert meta.walk_steps == walk.steps
        assert meta.merge_points == [(name, channels) for name, channels in walk.merges]


def test_building_a_model_draws_the_same_weights_whether_its_walk_is_known_or_not():
    arguments = dict(num_classes=3, drop_path_rate=0.0123)  # an architecture no other test builds: a new walk
    torch.manual_seed(5)
    derived_now = timm.create_model("roi_regnetx_002_add_all", **arguments)
    torch.manual_seed(5)
    known = timm.create_model("roi_regnetx_002_add_all", **arguments)
    torch.manual_seed(5)
    plain = timm.create_model("regnetx_002", **arguments)
    for model in (derived_now, known):
        weights = model.backbone.state_dict()
        assert all(torch.equal(weights[key], value) for key, value in plain.state_dict().items())
