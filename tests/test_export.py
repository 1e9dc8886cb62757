"""ONNX export with two named inputs, and torch.compile, against eager PyTorch."""

import numpy as np
import pytest
import torch

from .conftest import SMALL_MODELS, box_mask, make_model, random_image, randomize_side_branch

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
