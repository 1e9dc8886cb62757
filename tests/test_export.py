"""ONNX export with two named inputs, and torch.compile, against eager PyTorch."""

import numpy as np
import pytest
import torch

from .conftest import (
    ALL_MODELS,
    SMALL_MODELS,
    backbone_of,
    box_mask,
    make_model,
    random_image,
    randomize_side_branch,
    train_with_frozen_batch_norm,
)

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_onnx_export_with_image_and_mask_inputs_matches_pytorch(name, tmp_path):
    model = make_model(name)
    randomize_side_branch(model, std=0.1)
    image, mask = random_image(), box_mask()
    program = torch.onnx.export(
        model, (image, mask), input_names=["image", "mask"], output_names=["logits"], dynamo=True, verbose=False
    )
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "mask"]
    for other_mask in (mask, box_mask(box=(40, 0, 64, 10)), torch.ones_like(mask)):
        (logits,) = session.run(None, {"image": image.numpy(), "mask": other_mask.numpy()})
        with torch.no_grad():
            expected = model(image, mask=other_mask).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["roi_resnet18_mul_all", "roi_tf_efficientnet_lite0_crop"])
def test_torch_compile_matches_eager(name):
    model = make_model(name)
    randomize_side_branch(model, std=0.1)
    image, mask = random_image(), box_mask()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(image, mask=mask)
        assert torch.allclose(compiled(image, mask=mask), expected, atol=1e-5)
        other = box_mask(box=(0, 0, 10, 64))
        assert torch.allclose(compiled(torch.cat([image, other], 1)), model(image, mask=other), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in ALL_MODELS if backbone_of(name) == "resnet18"])
def test_torch_compile_traces_the_whole_forward_as_one_graph(name):
    """No graph breaks in inference, nor in training with gradient checkpointing (each stage a checkpoint): every
    variant (the merge code is the same on every backbone; EfficientNet-Lite0 is compiled in the tests below)."""
    model = make_model(name)
    image, mask = random_image(), box_mask()
    for train, checkpointing in ((False, False), (True, True)):
        model.train(train)
        model.set_grad_checkpointing(checkpointing)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(image, mask=mask)
        assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
        assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["roi_resnet18_mul_all", "roi_tf_efficientnet_lite0_add_l3"])
def test_compiled_training_with_checkpointed_stages_gives_the_eager_gradients(name):
    model = train_with_frozen_batch_norm(make_model(name))  # the same batch statistics in both runs
    randomize_side_branch(model, std=0.1)
    image, mask = random_image(), box_mask()
    model(image, mask=mask).square().sum().backward()
    eager = {key: parameter.grad.clone() for key, parameter in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch._dynamo.reset()
    # aot_eager: the compiler's own graph and recomputation, without code generation (the same numbers as eager).
    logits = torch.compile(model, backend="aot_eager")(image, mask=mask)
    logits.square().sum().backward()
    for key, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, eager[key], atol=1e-6, rtol=1e-5), key
