"""The tools timm users wrap models with, on ROI models, each compared with the eager model: timm's transform,
benchmark input, TorchScript, torch.fx and FX features, activation checkpointing, conv+bn+act fusion, pruning,
dtype/device at creation, copies, timm's ONNX export and torch.export."""

import copy
import io
import pickle

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import get_graph_node_names
from torch.ao.quantization import fuse_modules
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torchvision.models.feature_extraction import NodePathTracer

from roi_attention.data.transforms import prepare_regions
from roi_attention.examples import COFFEE_REGIONS, polygon_mask

from .conftest import (
    SMALL_MODELS,
    VIT_MODELS,
    backbone_of,
    box_mask,
    make_model,
    random_image,
    randomize_side_branch,
    train_with_frozen_batch_norm,
    variant_of,
)

skimage_data = pytest.importorskip("skimage.data")

# Every variant on the small Vision Transformer, and DeiT's two prefix tokens.
SMALL_VITS = [n for n in VIT_MODELS if backbone_of(n) == "vit_small_patch16_224"]
VITS = [*SMALL_VITS, "roi_deit_small_distilled_patch16_224_mul_all", "roi_vit_small_patch14_reg4_dinov2_add_l3"]


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


def test_timms_benchmark_input_is_a_photo_alone_and_passes_the_value_check():
    # timm's benchmark.py and validate.py: torch.randn((batch,) + input_size) from timm's own resolver.
    from timm.data.model_config import resolve_input_data_config

    model = make_model("roi_resnet18_mul_all")
    config = resolve_input_data_config(model)
    assert config["input_size"][0] == 3 and len(config["mean"]) == 3
    random_input = torch.randn((2, *config["input_size"][:1], 64, 64))
    with torch.no_grad():
        assert torch.equal(model(random_input), model(random_input, mask=torch.ones(2, 1, 64, 64)))


def trained(name, **kwargs):
    model = make_model(name, **kwargs)
    randomize_side_branch(model, std=0.1)
    return model


@pytest.mark.parametrize("name", [*SMALL_MODELS, *VITS])
def test_torchscript_gives_the_eager_logits_for_every_input_form_and_survives_save_and_load(name):
    model = trained(name)
    image, mask = random_image(), box_mask()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        for args in ((image, mask), (torch.cat([image, mask], 1), None), (image, None)):
            expected = model(*args)
            for compiled in (scripted, loaded):
                assert torch.allclose(compiled(*args), expected, atol=1e-5), args[1] is None
        assert torch.allclose(scripted.forward_features(image, mask), model.forward_features(image, mask), atol=1e-5)
    with pytest.raises(torch.jit.Error, match=r"RoiInputError.*mask batch size"):
        scripted(image, mask[:1])


def _fx_trace(model):
    tracer = NodePathTracer(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    return torch.fx.GraphModule(model, tracer.trace(model))


@pytest.mark.parametrize("name", [*SMALL_MODELS, *VITS])
def test_torch_fx_traces_one_graph_that_takes_every_input_form(name):
    model = trained(name)
    image, mask = random_image(), box_mask()
    graph = _fx_trace(model)
    with torch.no_grad():
        for args in ((image, mask), (torch.cat([image, mask], 1), None), (image, None)):
            assert torch.allclose(graph(*args), model(*args), atol=1e-5)
    # The input checks run in the graph as in the model.
    with pytest.raises(ValueError, match="0/255"):
        graph(image, mask * 255)


@pytest.mark.parametrize("name", ["roi_resnet18_add_all", "roi_tf_efficientnet_lite0_mul_all", "roi_resnet18_crop"])
def test_fx_features_are_the_getters_features_with_the_mask_merged_in(name):
    from timm.models._features import FeatureGetterNet
    from timm.models._features_fx import FeatureGraphNet

    model = trained(name)
    image, mask = random_image(), box_mask()
    indices = tuple(range(len(model.feature_info)))
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=indices).eval()
    graph = FeatureGraphNet(copy.deepcopy(model), out_indices=indices).eval()
    with torch.no_grad():
        expected = getter(torch.cat([image, mask], 1))
        for got, want in zip(graph(torch.cat([image, mask], 1)), expected, strict=True):
            assert torch.allclose(got, want, atol=1e-5)
        others = graph(torch.cat([image, torch.zeros_like(mask)], 1))
    if variant_of(name) != "full":
        assert not torch.allclose(others[-1], expected[-1], atol=1e-4)  # the features follow the mask
    built = timm.create_model(name, features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        assert [f.shape[1] for f in built(image)] == built.feature_info.channels()
    with pytest.raises(ValueError, match="feature_cls"):
        timm.create_model(name, features_only=True, feature_cls="hook")


@pytest.mark.parametrize(
    "name", ["roi_resnet18_mul_all", "roi_tf_efficientnet_lite0_add_l3", "roi_vit_small_patch16_224_mul_all"]
)
def test_torchs_activation_checkpointing_of_the_stages_gives_the_same_gradients(name):
    model = train_with_frozen_batch_norm(trained(name))  # the same batch statistics in both runs
    image, mask = random_image(), box_mask()

    def gradients(net):
        net.zero_grad()
        net(image, mask=mask).square().sum().backward()
        return {key.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for key, p in net.named_parameters()}

    expected = gradients(model)
    wrapped = copy.deepcopy(model)  # FSDP's activation checkpointing wraps each stage where it sits
    stages = [wrapped.backbone.get_submodule(info["module"]) for info in model.backbone.feature_info]
    stages = [stage for stage in stages if any(True for _ in stage.parameters())]
    apply_activation_checkpointing(wrapped, check_fn=lambda module: any(module is stage for stage in stages))
    assert sum("_checkpoint_wrapped_module" in key for key, _ in wrapped.named_modules()) >= len(stages)
    got = gradients(wrapped)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("name", [n for n in SMALL_MODELS if n.startswith("roi_resnet18_")])
def test_conv_bn_act_fusion_keeps_the_output_and_refuses_across_a_merge_point(name):
    model = trained(name)
    image, mask = random_image(), box_mask()
    with torch.no_grad():
        expected = model(image, mask=mask)
    within_stages = copy.deepcopy(model)
    fuse_modules(
        within_stages.backbone,
        [[f"layer{i}.0.conv1", f"layer{i}.0.bn1", f"layer{i}.0.act1"] for i in (1, 2, 3, 4)],
        inplace=True,
    )
    with torch.no_grad():
        assert torch.allclose(within_stages(image, mask=mask), expected, atol=1e-3)
    stem = copy.deepcopy(model)
    fuse_modules(stem.backbone, [["conv1", "bn1", "act1"]], inplace=True)  # the first step of quantising
    if any(point == "conv1" for point, _ in model.merge_points):
        with pytest.raises(RuntimeError, match=r"fused .* merges right after conv1"):
            stem(image, mask=mask)
        with pytest.raises(RuntimeError, match="fused"):
            torch.jit.script(stem)
    else:
        with torch.no_grad():
            assert torch.allclose(stem(image, mask=mask), expected, atol=1e-3)


@pytest.mark.parametrize(
    "name", [*SMALL_MODELS, "roi_vit_small_patch16_224_mul_all", "roi_vit_small_patch16_224_add_l3"]
)
def test_pruned_features_train_every_parameter(name):
    size = {"img_size": 64} if name in VIT_MODELS else {}
    model = timm.create_model(name, features_only=True, out_indices=(1, 2), **size).train()
    randomize_side_branch(model.model, std=0.1)
    image, mask = random_image(), box_mask()
    features = model(torch.cat([image, mask], 1))
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    sum(f.square().mean() for f in features).backward()
    assert [key for key, p in model.named_parameters() if p.grad is None] == []
    kept = {key for key in model.model.roi_branch}
    assert all(point.replace(".", "_") in kept for point, _ in model.model.merge_points)


@pytest.mark.parametrize(
    "name",
    [
        "roi_resnet18_mul_all",
        "roi_tf_efficientnet_lite0_add_l1",
        "roi_resnet18_crop",
        "roi_vit_small_patch16_224_add_all",
    ],
)
def test_dtype_and_device_at_creation_reach_the_side_branch(name):
    size = {"img_size": 64} if name in VIT_MODELS else {}
    with torch.device("meta"):
        meta = timm.create_model(name, device="meta", **size)
    assert {p.device.type for p in meta.parameters()} | {b.device.type for b in meta.buffers()} == {"meta"}
    model = trained(name)
    half = timm.create_model(name, num_classes=5, dtype=torch.bfloat16, **size).eval()
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    half.load_state_dict(model.state_dict())
    image, mask = random_image(), box_mask()
    with torch.no_grad():
        expected = model(image, mask=mask)
        got = half(image.bfloat16(), mask=mask)  # a float mask with a bf16 image
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max() + 0.05


@pytest.mark.parametrize("name", [*SMALL_MODELS, "roi_vit_small_patch16_224_add_l1"])
def test_default_cfg_is_the_pretrained_cfg_whatever_the_channels(name):
    for in_chans in (3, 1):
        model = make_model(name, in_chans=in_chans)
        assert model.default_cfg is model.pretrained_cfg
        assert model.default_cfg["input_size"][0] == in_chans == model.in_chans
        assert len(model.default_cfg["mean"]) == in_chans


@pytest.mark.parametrize(
    "name",
    [
        "roi_resnet18_mul_all",
        "roi_tf_efficientnet_lite0_add_l3",
        "roi_resnet18_crop",
        "roi_vit_small_patch16_224_add_l3",
    ],
)
def test_deepcopy_and_pickle_give_the_same_model(name):
    model = trained(name)
    image, mask = random_image(), box_mask()
    with torch.no_grad():
        expected = model(image, mask=mask)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(other(image, mask=mask), expected)
            assert other.walk_steps == model.walk_steps


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "roi_resnet18_add_l1",
        "roi_tf_efficientnet_lite0_mul_l3",
        "roi_resnet18_crop",
        "roi_vit_small_patch16_224_add_l1",
    ],
)
def test_timms_onnx_export_needs_no_input_size(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from timm.utils.onnx import onnx_export

    model = trained(name, **({"img_size": 224} if name in VIT_MODELS else {}))  # a ViT of its pretrained size
    path = tmp_path / "model.onnx"
    onnx_export(model, str(path), batch_size=1)  # the size comes from the model's pretrained_cfg
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    size = model.pretrained_cfg["input_size"]
    assert given.shape[1:] == list(size)
    photo = torch.randn(1, *size)
    (logits,) = session.run(None, {given.name: photo.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(photo).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "roi_resnet18_mul_all",
        "roi_tf_efficientnet_lite0_add_l1",
        "roi_resnet18_crop",
        "roi_vit_small_patch16_224_mul_all",
    ],
)
def test_torch_export_gives_the_eager_logits(name):
    model = trained(name)
    image, mask = random_image(), box_mask()
    program = torch.export.export(model, (image,), kwargs={"mask": mask})
    with torch.no_grad():
        for other in (mask, box_mask(box=(40, 0, 64, 10))):
            assert torch.allclose(program.module()(image, mask=other), model(image, mask=other), atol=1e-5)


def test_a_text_head_is_cosine_logits_scripts_and_goes_with_a_reset():
    """A CLIP-style text head on a small ViT: logits = normalised embedding x the head's rows, as eager, scripted
    and traced; reset_classifier gives the backbone a plain head again (and says so in the saved arguments)."""
    model = trained("roi_vit_small_patch16_224_add_l1", num_classes=3, text_embed_dim=6)
    torch.nn.init.normal_(model.text_head.weight)
    image, mask = random_image(), box_mask()
    with torch.no_grad():
        embedding = model.backbone.forward_head(model.forward_features(image, mask))
        expected = torch.nn.functional.normalize(embedding, dim=-1) @ model.text_head.weight.T
        assert embedding.shape == (2, 6) and model.num_classes == 3
        assert torch.allclose(model(image, mask=mask), expected, atol=1e-6)
        assert torch.allclose(torch.jit.script(model)(image, mask), expected, atol=1e-5)
        assert torch.allclose(_fx_trace(model)(image, mask), expected, atol=1e-5)
        assert model.forward_head(model.forward_features(image, mask), pre_logits=True).shape == (2, 384)
    assert model.get_classifier() is model.text_head
    model.reset_classifier(7)
    assert model.text_head is None and model._model_args["text_embed_dim"] == 0
    with torch.no_grad():
        assert model(image, mask=mask).shape == (2, 7)


@pytest.mark.parametrize("name", ["roi_resnet18_add_l1", "roi_resnet18_add_all"])
def test_fx_traces_the_add_merge_with_autograd_off(name, image, mask):
    """Inference merges differently from training (in place, eagerly); a tracer with autograd off must still see
    the plain conv and sum, never branch on a traced tensor's attributes (timm's fx test traces so)."""
    model = make_model(name)
    randomize_side_branch(model)
    with torch.no_grad():
        traced = torch.fx.symbolic_trace(model, concrete_args={"mask": None})
        packed = torch.cat([image, mask], 1)
        torch.testing.assert_close(traced(packed), model(packed), atol=1e-4, rtol=1e-4)
        _, eval_nodes = get_graph_node_names(make_model("roi_tf_efficientnet_lite0_add_all"))  # timm's tracer
    assert [n for n in eval_nodes if n.startswith("roi_branch.") and n.endswith(".add")], eval_nodes
