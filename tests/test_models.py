"""Every registered ROI model against its definition and against the plain timm backbone."""

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

from roi_attention.layers import resize_mask
from roi_attention.models import BACKBONES, VARIANTS

from .conftest import (
    ALL_MODELS,
    ATTENTION_MODELS,
    CNN_MODELS,
    NUM_CLASSES,
    SIZE,
    SMALL_MODELS,
    TOKEN_BACKBONES,
    backbone_of,
    box_mask,
    make_model,
    models_with,
    plain_backbone,
    random_image,
    randomize_side_branch,
    tiered,
    train_with_frozen_batch_norm,
    variant_of,
)


def test_registry_holds_every_backbone_and_variant():
    expected = {f"roi_{b}_{v}" for b, v in itertools.product(BACKBONES, VARIANTS)}
    assert set(ALL_MODELS) == expected
    assert len(ALL_MODELS) == len(BACKBONES) * len(VARIANTS)


def test_merge_points_follow_method_md_for_resnet50():
    expected = {
        "add_l1": [("conv1", 64)],
        "mul_l1": [("conv1", 64)],
        "add_l3": [("layer3", 1024)],
        "mul_l3": [("layer3", 1024)],
        "add_all": [("conv1", 64), ("layer1", 256), ("layer2", 512), ("layer3", 1024), ("layer4", 2048)],
        "blackout_l1": [("conv1", 64)],
        "blackout_image": [],
        "crop": [],
        "full": [],
    }
    for variant, points in expected.items():
        model = timm.create_model(f"roi_resnet50_{variant}", num_classes=3)
        assert model.merge_points == points, variant
        convs = [m for m in model.roi_branch.modules() if isinstance(m, torch.nn.Conv2d)]
        if VARIANTS[variant].merge in ("add", "mul"):
            assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
                (1, ch, (3, 3), (1, 1)) for _, ch in points
            ]
            assert all(c.bias is not None for c in convs)
        else:
            assert convs == []


def test_efficientnet_merge_points_come_from_timm_feature_info():
    backbone = timm.create_model("tf_efficientnet_lite0")
    stride16 = [i["module"] for i in backbone.feature_info if i["reduction"] == 16][-1]

    def points(variant):
        return make_model(f"roi_tf_efficientnet_lite0_{variant}").merge_points

    assert points("add_l1") == [("conv_stem", backbone.conv_stem.out_channels)]
    assert points("mul_l3") == [(stride16, 112)]
    assert points("add_all") == [("conv_stem", 32)] + [(i["module"], i["num_chs"]) for i in backbone.feature_info]


@pytest.mark.parametrize("name", tiered(ALL_MODELS))
def test_packed_input_and_mask_keyword_agree(name, image, mask):
    model = make_model(name)
    randomize_side_branch(model)
    with torch.no_grad():
        packed = model(torch.cat([image, mask], dim=1))
        keyword = model(image, mask=mask)
        squeezed = model(image, mask=mask[:, 0])
        boolean = model(image, mask=mask.bool())
    assert packed.shape == (2, NUM_CLASSES)
    assert torch.equal(packed, keyword)
    assert torch.equal(packed, squeezed)
    assert torch.equal(packed, boolean)


@pytest.mark.parametrize(
    "name", tiered(models_with("add_l1", "mul_l1", "add_l3", "mul_l3", "add_all", "mul_all", "full"))
)
def test_at_init_output_is_the_backbones_for_any_mask(name, image):
    model = make_model(name)
    plain = plain_backbone(model)
    masks = [box_mask(), torch.zeros(2, 1, SIZE, SIZE), torch.ones(2, 1, SIZE, SIZE), torch.rand(2, 1, SIZE, SIZE)]
    with torch.no_grad():
        expected = plain(image)
        for mask in masks:
            assert torch.equal(model(image, mask=mask), expected)


@pytest.mark.parametrize("name", tiered(models_with("full")))
def test_full_model_ignores_the_mask_even_when_trained(name, image):
    model = make_model(name)
    with torch.no_grad():
        outputs = [model(image, mask=m) for m in (box_mask(), torch.zeros(2, 1, SIZE, SIZE))]
    assert torch.equal(outputs[0], outputs[1])
    assert len(list(model.roi_branch.parameters())) == 0


@pytest.mark.parametrize("name", tiered(models_with("blackout_image")))
def test_blackout_image_is_the_backbone_on_the_masked_image(name, image, mask):
    model = make_model(name)
    plain = plain_backbone(model)
    with torch.no_grad():
        assert torch.equal(model(image, mask=mask), plain(image * mask))


@pytest.mark.parametrize("name", tiered(models_with("blackout_l1")))
def test_blackout_l1_zeroes_the_first_conv_outside_the_roi(name, image, mask):
    model = make_model(name)
    plain = plain_backbone(model)
    first_conv = plain.get_submodule(plain.pretrained_cfg["first_conv"])
    stride = first_conv.stride[0]
    assert first_conv.stride == (stride, stride) and stride > 1
    # Independent of the model's resize: the first conv divides 64 px by its stride, so a max pool is the resize.
    handle = first_conv.register_forward_hook(lambda mod, args, out: out * F.max_pool2d(mask, stride))
    with torch.no_grad():
        expected = plain(image)
        handle.remove()
        unmasked = plain(image)
        actual = model(image, mask=mask)
    scale = float(unmasked.abs().max())  # DINOv2's layer scale (1e-5 at init) makes its logits tiny
    assert torch.allclose(actual, expected, atol=1e-5 * scale)
    assert not torch.allclose(actual, unmasked, atol=1e-3 * scale)


@pytest.mark.parametrize("name", tiered(models_with("crop")))
def test_crop_sees_only_the_box_plus_margin(name, image):
    model = make_model(name, crop_margin=0.0)
    plain = plain_backbone(model)
    full = torch.ones(2, 1, SIZE, SIZE)
    square = box_mask(box=(8, 16, 40, 48))  # a 32x32 box: the crop is exactly that box
    with torch.no_grad():
        # A whole-image mask with no margin crops the photo unchanged.
        assert torch.allclose(model(image, mask=full), plain(image), atol=1e-5)
        # Upsampling the whole photo 2x and cutting the box out samples the same points as a 2x crop.
        upsampled = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        crop = upsampled[:, :, 16:80, 32:96]
        assert torch.allclose(model(image, mask=square), plain(crop), atol=1e-4)
        outside = image.clone()
        outside[:, :, 48:, :] = 5.0  # below the box
        assert torch.equal(model(outside, mask=square), model(image, mask=square))
        inside = image.clone()
        inside[:, :, 12:36, 20:44] = 5.0
        assert not torch.equal(model(inside, mask=square), model(image, mask=square))


@pytest.mark.parametrize("name", tiered([n for n in ALL_MODELS if variant_of(n) != "full"]))
def test_output_depends_on_the_mask_once_the_side_branch_is_trained(name, image):
    model = make_model(name)
    randomize_side_branch(model)
    with torch.no_grad():
        a = model(image, mask=box_mask(box=(0, 0, 24, 24)))
        b = model(image, mask=box_mask(box=(30, 30, 60, 60)))
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", tiered([n for n in CNN_MODELS if VARIANTS[variant_of(n)].at in ("l1", "l3", "all")]))
def test_a_one_pixel_roi_reaches_every_merge_point(name):
    model = make_model(name)
    randomize_side_branch(model)
    image = random_image(batch=1, size=67)  # odd size: feature maps do not divide the input evenly
    seen = {}

    def record(key):
        def hook(module, args, output):
            resized = resize_mask(args[1], output.shape[-2:], model.mask_resize)
            seen.setdefault(key, []).append((resized.detach().clone(), output.detach().clone()))

        return hook

    handles = [layer.register_forward_hook(record(key)) for key, layer in model.roi_branch.items()]
    for y, x in [(0, 0), (66, 66), (33, 17)]:
        seen.clear()
        pixel = torch.zeros(1, 1, 67, 67)
        pixel[..., y, x] = 1
        with torch.no_grad():
            model(image, mask=pixel)
            model(image, mask=torch.zeros_like(pixel))
        assert set(seen) == set(model.roi_branch), "every merge point must run"
        for key, ((resized, merged), (_, merged_empty)) in seen.items():
            assert resized.amax() == 1, f"the pixel at {(y, x)} vanished at merge point {key}"
            assert not torch.equal(merged, merged_empty), f"merge point {key} ignored the pixel at {(y, x)}"
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("name", tiered(ALL_MODELS))
def test_forward_backward_reaches_the_side_branch(name, image, mask):
    model = make_model(name).train()
    randomize_side_branch(model, std=0.05)
    logits = model(image, mask=mask)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(logits).all()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all(), key
    branch = list(model.roi_branch.parameters())
    if VARIANTS[variant_of(name)].merge in ("add", "mul"):
        assert branch and all(p.grad.abs().sum() > 0 for p in branch)
    else:
        assert branch == []


@pytest.mark.parametrize("name", tiered(ATTENTION_MODELS))
def test_side_branch_gets_gradient_at_its_zero_effect_init(name, image, mask):
    model = make_model(name).train()
    F.cross_entropy(model(image, mask=mask), torch.tensor([0, 1])).backward()
    weights = [m.weight.grad for m in model.roi_branch.values()]
    assert all(w is not None and w.abs().sum() > 0 for w in weights)


@pytest.mark.parametrize(
    "name", [*SMALL_MODELS, "roi_vit_small_patch16_224_add_all", "roi_vit_small_patch16_224_mul_l3"]
)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name, image, mask):
    model = train_with_frozen_batch_norm(make_model(name))
    randomize_side_branch(model, std=0.05)
    other_mask = box_mask(box=(30, 0, 64, 20))

    def step(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        logits = model(image, mask=mask)
        # A second forward with another mask before the backward: recomputation must use the first mask.
        model(image, mask=other_mask)
        logits.square().sum().backward()
        return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    stage = model.backbone.get_submodule(model.backbone.feature_info[-1]["module"])
    # A CNN stage's last block is recomputed by the walk's checkpoints and by timm's own (per block); a ViT block is
    # a stage (the recomputation of its last layers stops early once their inputs are there).
    block = stage if backbone_of(name) in TOKEN_BACKBONES else list(stage.children())[-1]
    calls = []
    handle = block.register_forward_pre_hook(lambda *args: calls.append(1))
    plain_logits, plain_grads = step(False)
    assert len(calls) == 2  # two forwards
    checkpointed_logits, checkpointed_grads = step(True)
    assert len(calls) == 2 + 3  # two forwards and the recomputation in the backward
    handle.remove()
    assert torch.allclose(plain_logits, checkpointed_logits, atol=1e-6)
    for key in plain_grads:
        assert torch.allclose(plain_grads[key], checkpointed_grads[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("name", tiered(ALL_MODELS))
def test_reset_classifier(name, image, mask):
    model = make_model(name)
    model.reset_classifier(7)
    assert model.num_classes == 7
    classifiers = model.get_classifier()  # DeiT's distilled models have two heads
    assert all(c.out_features == 7 for c in (classifiers if isinstance(classifiers, tuple) else (classifiers,)))
    with torch.no_grad():
        assert model(image, mask=mask).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        features = model(image, mask=mask)
    assert features.shape == (2, model.head_hidden_size)  # MobileNetV3's conv_head widens num_features


@pytest.mark.parametrize(
    "name", ["roi_resnet18_add_all", "roi_tf_efficientnet_lite0_mul_l3", "roi_vit_small_patch16_224_mul_all"]
)
def test_features_only_uses_the_mask(name, image, mask):
    size = {"img_size": SIZE} if backbone_of(name) in TOKEN_BACKBONES else {}
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), **size).eval()
    randomize_side_branch(model.model)
    with torch.no_grad():
        features = model(torch.cat([image, mask], dim=1))
        others = model(torch.cat([image, torch.zeros_like(mask)], dim=1))
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    assert [SIZE // f.shape[-1] for f in features] == model.feature_info.reduction()
    assert not torch.allclose(features[-1], others[-1])


@pytest.mark.parametrize("name", tiered(ALL_MODELS))
def test_pretrained_cfg_describes_the_photo_and_keeps_all_of_it(name):
    cfg = timm.models.get_pretrained_cfg(name)
    backbone_cfg = timm.models.get_pretrained_cfg(f"{backbone_of(name)}.{BACKBONES[backbone_of(name)]}")
    assert cfg.input_size == backbone_cfg.input_size  # the photo; the mask comes with mask=
    assert cfg.mean == backbone_cfg.mean and cfg.std == backbone_cfg.std
    assert (cfg.crop_mode, cfg.crop_pct) == ("border", 1.0)  # the whole photo: no region is cropped away
    assert cfg.license and cfg.num_classes == backbone_cfg.num_classes and cfg.hf_hub_id == backbone_cfg.hf_hub_id
    assert any("mask_resize" in note for note in cfg.notes)
    data_config = timm.data.resolve_data_config({}, model=make_model(name))
    assert data_config["input_size"][0] == 3 and len(data_config["mean"]) == 3


def test_region_tags_carry_their_labels():
    for name in timm.list_pretrained("roi_*.coco") + timm.list_pretrained("roi_*.opensurfaces"):
        cfg = timm.models.get_pretrained_cfg(name)
        assert len(cfg.label_names) == cfg.num_classes
        assert cfg.hf_hub_id == f"{roi_attention_hub_org()}/{name}"
    assert timm.models.get_pretrained_cfg("roi_resnet50_add_l1.coco").num_classes == 80
    assert timm.models.get_pretrained_cfg("roi_resnet50_add_l1.opensurfaces").num_classes == 44


def roi_attention_hub_org():
    from roi_attention import HUB_ORG

    return HUB_ORG


@pytest.mark.parametrize("mode", ["max", "area", "bilinear"])
def test_mask_resize_modes_are_selectable_and_saved(mode, image, mask):
    model = make_model("roi_resnet18_add_l3", mask_resize=mode)
    randomize_side_branch(model)
    assert model.mask_resize == mode
    assert model._model_args["mask_resize"] == mode
    with torch.no_grad():
        assert torch.isfinite(model(image, mask=mask)).all()


@pytest.mark.parametrize("name", tiered(ALL_MODELS))
def test_forward_regions_equals_one_batched_forward_per_mask(name):
    model = make_model(name)
    randomize_side_branch(model)
    image = random_image(batch=1)[0]
    masks = torch.zeros(4, SIZE, SIZE)
    masks[0, 5:30, 10:40] = 1
    masks[1, 40:60, 0:20] = 1
    masks[2, 33, 17] = 1  # one pixel
    masks[3] = 1
    with torch.no_grad():
        batched = model(image.expand(4, -1, -1, -1), mask=masks)
        for chunk_size in (None, 1, 3):  # the model's choice, one mask at a time, uneven groups
            shared = model.forward_regions(image, masks, chunk_size=chunk_size)
            assert shared.shape == (4, NUM_CLASSES)
            # another batch layout: float32 reduction order differs (logits here reach ~20)
            assert torch.allclose(shared, batched, atol=1e-3, rtol=1e-4), chunk_size


@pytest.mark.parametrize("name", ["roi_resnet18_add_l1", "roi_tf_efficientnet_lite0_mul_all"])
def test_forward_regions_runs_the_first_conv_once_whatever_the_groups(name):
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(name)
    image, masks = random_image(batch=1)[0], torch.ones(6, SIZE, SIZE)
    conv = model.backbone.get_submodule(model.backbone.pretrained_cfg["first_conv"])
    stem_flops = 2 * conv.weight.numel() * (SIZE // 2) ** 2  # one image through the stride-2 first conv

    def flops(function):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            function()
        return counter.get_total_flops()

    one = flops(lambda: model(image[None], mask=masks[:1]))
    grouped = flops(lambda: model.forward_regions(image, masks, chunk_size=1))
    assert grouped == 6 * one - 5 * stem_flops


def test_forward_regions_runs_the_trunk_once():
    model = make_model("roi_resnet18_add_l3")
    batch_sizes = {}
    for name in ("layer1", "layer3", "layer4"):
        model.backbone.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: batch_sizes.__setitem__(name, args[0].shape[0])
        )
    with torch.no_grad():
        model.forward_regions(random_image(batch=1), torch.ones(6, 1, SIZE, SIZE))
    assert batch_sizes == {"layer1": 1, "layer3": 1, "layer4": 6}
    with pytest.raises(ValueError, match="one photo"):
        model.forward_regions(random_image(batch=2), torch.ones(2, 1, SIZE, SIZE))


def test_grad_checkpointing_is_refused_where_the_walk_has_no_stage_to_recompute():
    from roi_attention.models import RoiAttentionNet

    with torch.device("meta"):  # xception41's add_l1 walk steps over its blocks as one container: no stage
        model = RoiAttentionNet("xception41", "add_l1", num_classes=3)
    assert not model.features_walked
    with pytest.raises(RuntimeError, match="no stage with parameters to recompute"):
        model.set_grad_checkpointing(True)
    assert model.grad_checkpointing is False
    model.set_grad_checkpointing(False)


@pytest.mark.parametrize("name", ["roi_resnet18_add_all", "roi_vit_small_patch16_224_mul_all"])
def test_feature_info_follows_pruning(name):
    model = make_model(name)
    stages = len(model.feature_info)
    kept = model.prune_intermediate_layers(indices=[0, 2])
    assert kept == [0, 2] and len(model.feature_info) == 3 < stages
    with torch.no_grad():
        features = model.forward_intermediates(random_image(), mask=box_mask(), indices=kept, intermediates_only=True)
    assert [f.shape[1] for f in features] == [model.feature_info[i]["num_chs"] for i in kept]
    # every merge point left follows a stage still there
    assert all(key in model.roi_branch for key in {step.merge for step in model.walk_steps if step.merge})


# The add merge of CNNs in eager inference is a batched product added into the features (written in place where the
# walk made them); every other path is the conv and the sum. The product against the conv, in both memory layouts.
ADD_CNN_MODELS = [name for name in CNN_MODELS if VARIANTS[variant_of(name)].merge == "add"]
PATCH_PRODUCT_TIER_ONE = ("roi_resnet18_add_all", "roi_tf_efficientnet_lite0_add_l1", "roi_convnext_atto_add_l3")


@pytest.mark.parametrize(
    "name", [n if n in PATCH_PRODUCT_TIER_ONE else pytest.param(n, marks=pytest.mark.slow) for n in ADD_CNN_MODELS]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_merge_by_patches_equals_the_conv_and_writes_only_its_own(name, channels_last):
    model = make_model(name)
    randomize_side_branch(model)
    image, mask = random_image(batch=3), box_mask(batch=3)
    mask[1] = 0
    mask[1, :, 33, 17] = 1  # one pixel
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    image_before, mask_before = image.clone(), mask.clone()
    with torch.enable_grad():  # autograd on: the conv and the sum
        logits = model(image, mask=mask).detach()
        features = [f.detach() for f in model.forward_intermediates(image, mask=mask, intermediates_only=True)]
        regions = model.forward_regions(image[0], mask).detach()
    with torch.no_grad():
        assert torch.allclose(model(image, mask=mask), logits, atol=1e-4, rtol=1e-4)
        # the intermediates handed out are not written by the steps after them
        inference = model.forward_intermediates(image, mask=mask, intermediates_only=True)
        for got, expected in zip(inference, features, strict=True):
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
        # the regions of one photo share the trunk (expanded, never written)
        assert torch.allclose(model.forward_regions(image[0], mask), regions, atol=1e-4, rtol=1e-4)
    assert torch.equal(image, image_before) and torch.equal(mask, mask_before)


def test_a_hook_sees_the_features_the_add_merge_was_given_unwritten():
    model = make_model("roi_resnet18_add_l1")
    randomize_side_branch(model)
    image, mask = random_image(), box_mask()
    with torch.no_grad():
        stem = model.backbone.conv1(image)
    seen = {}
    for module, key in ((model.backbone.conv1, "conv1 output"), (model.roi_branch["conv1"], "merge input")):
        hook = module.register_forward_hook(
            lambda m, args, output, key=key: seen.setdefault(key, output if key == "conv1 output" else args[0])
        )
        with torch.no_grad():
            model(image, mask=mask)
        hook.remove()
        assert torch.equal(seen[key], stem), key  # written in place, it would hold the sum
