"""Vision Transformers: the mask merged into the patch tokens, at the merge points the walk derives."""

import pytest
import timm
import torch

from roi_attention.layers import TokenMaskAttentionAdd, TokenMaskAttentionMul
from roi_attention.models import RoiAttentionNet, WiringError

from .conftest import (
    SIZE,
    TOKEN_BACKBONES,
    VIT_MODELS,
    backbone_of,
    make_model,
    plain_backbone,
    random_image,
    randomize_side_branch,
    tiered,
    variant_of,
)

MERGING = [
    name for name in VIT_MODELS if variant_of(name) in ("add_l1", "mul_l1", "add_l3", "mul_l3", "add_all", "mul_all")
]


def patch_of(name: str) -> int:
    with torch.device("meta"):
        return timm.create_model(backbone_of(name)).patch_embed.patch_size[0]


@pytest.mark.parametrize("backbone", TOKEN_BACKBONES)
def test_merge_points_are_the_patch_embedding_three_quarters_and_every_block(backbone):
    with torch.device("meta"):
        plain = timm.create_model(backbone)
        models = {at: timm.create_model(f"roi_{backbone}_add_{at}") for at in ("l1", "l3", "all")}
    depth, width = len(plain.blocks), plain.embed_dim
    assert models["l1"].merge_points == [("patch_embed", width)]
    assert models["l3"].merge_points == [(f"blocks.{round(3 * depth / 4) - 1}", width)]
    # The heads pool the class token: the last block's patch tokens never reach them, so no merge follows it.
    assert plain.global_pool == "token"
    assert models["all"].merge_points == [("patch_embed", width)] + [(f"blocks.{i}", width) for i in range(depth - 1)]
    conv = models["l1"].roi_branch["patch_embed"]
    patch = plain.patch_embed.patch_size
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, width, patch, patch)


def test_vit_b_merges_after_block_8_and_deit_keeps_its_distillation_token():
    with torch.device("meta"):
        assert timm.create_model("roi_vit_base_patch16_clip_224_add_l3").merge_points == [("blocks.8", 768)]
        deit = timm.create_model("roi_deit_small_distilled_patch16_224_mul_all")
    assert deit.roi_branch["blocks_0"].prefix_tokens == 2 and deit.roi_branch["patch_embed"].prefix_tokens == 0


@pytest.mark.parametrize("name", tiered(MERGING))
def test_a_one_pixel_roi_reaches_its_patch_token_at_every_merge_point(name):
    model = make_model(name)
    randomize_side_branch(model)
    patch = patch_of(name)
    covered = SIZE // patch * patch  # the pixels the patch grid covers
    image = random_image(batch=1)
    seen = {}

    def record(key):
        def hook(module, args, output):
            seen.setdefault(key, []).append((args[0].detach().clone(), output.detach().clone()))

        return hook

    handles = [layer.register_forward_hook(record(key)) for key, layer in model.roi_branch.items()]
    # corners, the centre, and the two pixels either side of a patch border
    pixels = [(0, 0), (covered - 1, covered - 1), (SIZE // 2, SIZE // 2), (patch, patch - 1), (patch, patch)]
    for y, x in pixels:
        seen.clear()
        pixel = torch.zeros(1, 1, SIZE, SIZE)
        pixel[..., y, x] = 1
        with torch.no_grad():
            model(image, mask=pixel)
            model(image, mask=torch.zeros_like(pixel))
        assert set(seen) == set(model.roi_branch), "every merge point must run"
        token = (y // patch) * (SIZE // patch) + x // patch
        for key, ((_, merged), (_, merged_empty)) in seen.items():
            layer = model.roi_branch[key]
            prefix = layer.prefix_tokens
            changed = (merged - merged_empty).abs().amax(dim=-1)[0]  # per token
            assert changed[prefix + token] > 0, f"merge point {key} ignored the pixel at {(y, x)}"
            # The mask's own effect is on its patch's token alone (the tokens before differ through attention).
            direct = (layer.attention(pixel) - layer.attention(torch.zeros_like(pixel))).abs().amax(dim=-1)[0]
            assert direct.nonzero().flatten().tolist() == [prefix + token], (key, (y, x))
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("name", tiered([n for n in MERGING if variant_of(n).endswith("_all")]))
def test_prefix_tokens_are_never_merged_into(name):
    model = make_model(name)
    randomize_side_branch(model)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[:, :, 8:40, 4:30] = 1
    for key, layer in model.roi_branch.items():
        if layer.prefix_tokens:
            tokens = torch.randn(2, layer.prefix_tokens + (SIZE // layer.patch_size[0]) ** 2, layer.out_channels)
            merged = layer(tokens, mask)
            assert torch.equal(merged[:, : layer.prefix_tokens], tokens[:, : layer.prefix_tokens]), key
            assert not torch.equal(merged[:, layer.prefix_tokens :], tokens[:, layer.prefix_tokens :]), key


@pytest.mark.parametrize("layer_type", [TokenMaskAttentionAdd, TokenMaskAttentionMul])
def test_token_merge_layers_are_the_paper_merge_per_patch(layer_type):
    from roi_attention.layers import TokenLayout

    layer = layer_type(6, TokenLayout((4, 4), prefix_tokens=1))
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    mask = (torch.rand(2, 1, 8, 12) > 0.5).float()
    tokens = torch.randn(2, 1 + 2 * 3, 6)
    # by hand: the attention vector of a patch is the weights dotted with its mask pixels, plus the bias
    patches = mask.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 6, 16)
    attention = patches @ layer.weight.reshape(6, 16).T + layer.bias
    merged = layer(tokens, mask)
    expected = tokens[:, 1:] + attention if layer_type is TokenMaskAttentionAdd else tokens[:, 1:] * attention
    assert torch.allclose(merged[:, 1:], expected, atol=1e-5)
    assert torch.equal(merged[:, :1], tokens[:, :1])


@pytest.mark.parametrize("pad", [False, True])
def test_dynamic_img_size_takes_a_non_square_photo_and_the_mask_is_padded_like_the_image(pad):
    extra = dict(dynamic_img_size=True, dynamic_img_pad=pad)
    size = (72, 100) if pad else (64, 96)  # padded: to 80x112, the last row and column of patches partly outside
    model = timm.create_model("roi_vit_small_patch16_224_add_all", num_classes=3, img_size=64, **extra).eval()
    plain = timm.create_model("vit_small_patch16_224", num_classes=3, img_size=64, **extra).eval()
    plain.load_state_dict(model.backbone.state_dict())
    image = torch.randn(2, 3, *size)
    mask = torch.zeros(2, 1, *size)
    mask[:, :, 10:30, 50:90] = 1
    with torch.no_grad():
        assert torch.equal(model(image, mask=mask), plain(image))  # the zero-effect init at this size too
    randomize_side_branch(model)
    corner = torch.zeros(2, 1, *size)
    corner[..., -1, -1] = 1  # in the last patch, padded or not
    with torch.no_grad():
        assert torch.equal(model(image), model(image, mask=torch.ones_like(mask)))
        assert not torch.allclose(model(image, mask=mask), model(image))
        assert not torch.allclose(model(image, mask=corner), model(image, mask=torch.zeros_like(corner)))
        features = model.forward_intermediates(image, mask=mask, intermediates_only=True)
    grid = [-(-s // 16) for s in size] if pad else [s // 16 for s in size]
    assert all(list(f.shape) == [2, 384, *grid] for f in features)


def test_forward_intermediates_are_timms_at_init():
    model = make_model("roi_vit_small_patch16_224_add_all")
    plain = plain_backbone(model)
    image = random_image()
    with torch.no_grad():
        ours = model.forward_intermediates(image, mask=torch.ones(2, 1, SIZE, SIZE), indices=[2, 5, 11], norm=True)
        theirs = plain.forward_intermediates(image, indices=[2, 5, 11], norm=True)
    assert torch.equal(ours[0], theirs[0])
    assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1], strict=True))


def test_patch_dropout_past_the_stem_is_refused():
    with pytest.raises(WiringError, match="drops patch tokens"):
        RoiAttentionNet("vit_small_patch16_224", "add_l3", img_size=64, patch_drop_rate=0.1)
    RoiAttentionNet("vit_small_patch16_224", "add_l1", img_size=64, patch_drop_rate=0.1)  # before the drop: fine


def test_forward_regions_of_l3_runs_the_trunk_once():
    model = make_model("roi_vit_small_patch16_224_add_l3")
    randomize_side_branch(model)
    image, masks = random_image(batch=1)[0], torch.zeros(6, SIZE, SIZE)
    for index in range(6):
        masks[index, 10 * index : 10 * index + 8, 5:40] = 1
    with torch.no_grad():
        batched = model(image.expand(6, -1, -1, -1), mask=masks)
    batch_sizes = {}
    for name in ("blocks.0", "blocks.8", "blocks.9"):
        model.backbone.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: batch_sizes.__setitem__(name, args[0].shape[0])
        )
    with torch.no_grad():
        shared = model.forward_regions(image, masks)
    assert batch_sizes["blocks.0"] == 1 and batch_sizes["blocks.8"] == 1 and batch_sizes["blocks.9"] == 6
    assert torch.allclose(shared, batched, atol=1e-4, rtol=1e-4)
