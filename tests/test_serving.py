"""One model shared by many callers: threads, re-entrant calls and DataParallel replicas each get their own answer."""

import copy
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import replicate

from roi_attention.layers.merge import MaskAttentionMul

from .conftest import (
    NUM_CLASSES,
    box_mask,
    make_model,
    random_image,
    randomize_side_branch,
    sized,
    train_with_frozen_batch_norm,
    variant_of,
)

# A representative of every variant family, plus the model the bug report saw fail worst.
REPRESENTATIVES = [
    *(f"roi_resnet18_{v}" for v in ("add_l1", "mul_l1", "add_l3", "mul_l3", "add_all", "mul_all")),
    *(f"roi_resnet18_{v}" for v in ("blackout_image", "blackout_l1", "crop", "full")),
    "roi_tf_efficientnet_lite0_mul_all",
    "roi_vit_small_patch16_224_add_l1",
    "roi_vit_small_patch16_224_add_l3",
]
# 96 px: at 64 px, some regions of an untrained ResNet18 die before its 2x2 last stage, so masks there look alike.
SIZE = 96
BOXES = [(0, 0, 60, 60), (36, 36, 96, 96), (0, 36, 60, 96), (36, 0, 96, 60), (24, 24, 72, 72), (0, 0, 96, 96)]
TOLERANCE = 1e-5  # concurrent calls may split a reduction differently; a swapped answer is far larger


def _masks() -> list[torch.Tensor]:
    return [box_mask(batch=1, size=SIZE, box=box) for box in BOXES]


def _assert_distinct(answers: list[torch.Tensor]) -> None:
    """Every pair of answers differs by far more than the tolerance, so a swapped answer cannot pass."""
    for i, a in enumerate(answers):
        for b in answers[i + 1 :]:
            assert (a - b).abs().max() > 100 * TOLERANCE, "the masks must give distinguishable answers"


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_threads_sharing_one_model_each_get_the_answer_they_get_alone(name):
    model = make_model(name, **sized(name, SIZE))
    randomize_side_branch(model)
    image, masks = random_image(batch=1, size=SIZE), _masks()
    with torch.inference_mode():
        alone = [model(image, mask=mask) for mask in masks]
        alone_regions = model.forward_regions(image[0], torch.cat(masks))
    if variant_of(name) != "full":
        _assert_distinct(alone)

    def call(job: int) -> tuple[int, torch.Tensor]:
        index = job % len(masks)
        with torch.inference_mode():
            if job % 4 == 3:  # forward_regions and the packed input go through the same merge points
                return -1, model.forward_regions(image[0], torch.cat(masks))
            return index, model(torch.cat([image, masks[index]], dim=1))

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(call, range(48)))
    wrong = [
        index
        for index, logits in answers
        if not torch.allclose(logits, alone_regions if index < 0 else alone[index], atol=TOLERANCE, rtol=0)
    ]
    assert not wrong, f"{len(wrong)} of {len(answers)} threaded calls got another call's answer"


@pytest.mark.parametrize("name", ["roi_resnet18_add_all", "roi_resnet18_mul_l3", "roi_tf_efficientnet_lite0_add_l1"])
def test_a_call_made_inside_a_forward_does_not_disturb_the_outer_call(name):
    model = make_model(name)
    randomize_side_branch(model)
    image, (outer_mask, inner_mask, *_) = random_image(batch=1, size=SIZE), _masks()
    with torch.no_grad():
        outer_alone, inner_alone = model(image, mask=outer_mask), model(image, mask=inner_mask)
    _assert_distinct([outer_alone, inner_alone])
    inner = []

    def call_again(*_):  # a user's hook in the middle of the backbone that calls the same model (re-entrant)
        if not inner:
            inner.append(None)
            inner.append(model(image, mask=inner_mask))

    stage = model.backbone.get_submodule(model.backbone.feature_info[1]["module"])
    handle = stage.register_forward_hook(call_again)
    with torch.no_grad():
        outer = model(image, mask=outer_mask)
    handle.remove()
    assert torch.allclose(inner[1], inner_alone, atol=TOLERANCE, rtol=0)
    assert torch.allclose(outer, outer_alone, atol=TOLERANCE, rtol=0)


def test_a_forward_leaves_nothing_on_the_model():
    model = make_model("roi_resnet18_mul_all")
    randomize_side_branch(model)
    before = {key: value for key, value in vars(model).items() if not key.startswith("_")}
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        model(random_image(size=SIZE), mask=torch.cat(_masks()[:2]))
    after = {key: value for key, value in vars(model).items() if not key.startswith("_")}
    assert after == before  # no attribute set by a forward
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    modules = list(model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in modules)


def _cpu_replicas(model: torch.nn.Module, count: int, monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """``torch.nn.parallel.replicate`` on the CPU: torch's own replica logic, with the broadcast to GPUs
    replaced by a copy per replica (the only part that needs devices)."""
    replicate_module = sys.modules["torch.nn.parallel.replicate"]

    def broadcast(tensors, devices, detach=False):
        return [[t.detach().clone() if detach else t.clone() for t in tensors] for _ in devices]

    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", broadcast)
    return replicate(model, list(range(count)))


@pytest.mark.parametrize("name", ["roi_resnet18_mul_all", "roi_tf_efficientnet_lite0_add_l3", "roi_resnet18_crop"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_data_parallel_replicas_use_their_own_side_branch_and_their_slice_of_the_mask(name, checkpointing, monkeypatch):
    # batch statistics would differ between slices and the whole batch
    model = train_with_frozen_batch_norm(make_model(name))
    randomize_side_branch(model, std=0.1)
    model.set_grad_checkpointing(checkpointing)
    image = random_image(batch=4, size=SIZE)
    mask = torch.cat(_masks()[:4])
    replicas = _cpu_replicas(model, 2, monkeypatch)
    # The second replica's side branch is its own copy: change it, as a replica on another device would differ.
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for key, reference_parameter in reference.roi_branch.named_parameters():
            module, _, attribute = key.rpartition(".")  # a replica's parameters are plain attributes
            getattr(replicas[1].roi_branch.get_submodule(module), attribute).mul_(1.5)
            reference_parameter.mul_(1.5)
    # As DataParallel's parallel_apply does: one thread per replica, each with its slice of the batch.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda r, s: r(image[s], mask=mask[s]), replicas, (slice(0, 2), slice(2, 4)))
    assert torch.allclose(first, model(image[:2], mask=mask[:2]), atol=TOLERANCE, rtol=0)
    expected_second = reference(image[2:], mask=mask[2:])
    assert torch.allclose(second, expected_second, atol=TOLERANCE, rtol=0)
    # Backward through the replicas reaches the model's parameters (a recomputed stage with its replica's mask):
    # the gradient of slice 1 through the model plus that of slice 2 through the changed copy.
    (first.square().sum() + second.square().sum()).backward()
    through_replicas = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(image[:2], mask=mask[:2]).square().sum().backward()
    expected_second.square().sum().backward()
    references = dict(reference.named_parameters())
    assert set(through_replicas) == {key for key, p in model.named_parameters() if p.requires_grad}
    for key, parameter in model.named_parameters():
        expected = parameter.grad + references[key].grad
        assert torch.allclose(through_replicas[key], expected, atol=1e-5, rtol=1e-4), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nn.DataParallel needs two or more CUDA devices")
def test_data_parallel_on_several_gpus_gives_each_region_its_answer():
    model = make_model("roi_resnet18_mul_all")
    randomize_side_branch(model)
    image = random_image(batch=4, size=SIZE).cuda()
    mask = torch.cat(_masks()[:4]).cuda()
    model = model.cuda()
    with torch.no_grad():
        alone = torch.cat([model(image[i : i + 1], mask=mask[i : i + 1]) for i in range(4)])
        parallel = torch.nn.DataParallel(model)(image, mask=mask)
    assert parallel.shape == (4, NUM_CLASSES)
    assert torch.allclose(parallel, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("from_stem", [False, True])
def test_multiplication_keeps_only_the_small_mask_and_gives_autograds_gradients(autocast, from_stem):
    layer = MaskAttentionMul(16)
    stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in (layer.weight, layer.bias, stem.weight, stem.bias):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    image = torch.randn(2, 3, 24, 20, generator=generator)
    mask = (torch.rand(2, 1, 12, 10, generator=generator) > 0.5).float()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        features = stem(image) if from_stem else torch.randn(2, 16, 12, 10, generator=generator).requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            merged = layer.forward_after(stem, image, features, mask) if from_stem else layer(features, mask)
        plain = features * F.conv2d(mask, layer.weight, layer.bias, padding=1)  # autograd of the plain expression
    # Nothing of the attention map's size is kept, at most the features given (a block keeps them anyway).
    big = [t.data_ptr() for t in saved if t.numel() >= features.numel()]
    assert big == ([] if from_stem else [features.data_ptr()])
    assert torch.equal(merged, plain)
    upstream = torch.randn(merged.shape, generator=generator)
    inputs = (stem.weight, stem.bias) if from_stem else (features,)
    ours = torch.autograd.grad(merged, (*inputs, layer.weight, layer.bias), upstream, retain_graph=True)
    theirs = torch.autograd.grad(plain, (*inputs, layer.weight, layer.bias), upstream)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
