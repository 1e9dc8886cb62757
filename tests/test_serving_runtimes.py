"""Precisions and runtimes (roi_attention.serving) against eager float32: the same top-1 on real photos."""

import json
import os
import stat

import numpy as np
import pytest
import timm
import torch

from roi_attention.cli import main
from roi_attention.data import COCO_CLASSES, CocoRegions, build_region_dataset
from roi_attention.data.inputs import read_author_samples
from roi_attention.examples import PHOTO_REGIONS, polygon_mask
from roi_attention.hub import convert_efficientnet_lite0, save_model
from roi_attention.predict import predict_regions
from roi_attention.serving import (
    GraphCache,
    Int8Agreement,
    Int8AgreementWarning,
    RegionRunner,
    ServingError,
    ServingOptions,
    cpu_has_bf16,
    prepare_runner,
)

from .conftest import SHARED_FIXTURES, make_model, randomize_side_branch
from .data_fixtures import write_coco_fixture

pytest.importorskip("onnxruntime")
COCO = SHARED_FIXTURES / "coco_example"


def _coco_photos():
    if not COCO.is_dir():
        pytest.skip(f"{COCO} is absent (the real COCO photos and masks live in shared/fixtures)")
    return read_author_samples(COCO)


def _calibration(model):
    """scikit-image's photos with the app's hand-drawn regions, prepared for ``model`` (not the measured photos)."""
    from skimage import data

    from roi_attention.data.transforms import prepare_regions

    config = timm.data.resolve_data_config({}, model=model)
    for name, regions in PHOTO_REGIONS.items():
        photo = getattr(data, name)()
        masks = [polygon_mask(polygon, (photo.shape[1], photo.shape[0])) for polygon in regions.values()]
        batch = prepare_regions(photo, masks, config)
        yield batch[:1, :3], batch[:, 3:]


@pytest.fixture(scope="module")
def imagenet_add_l1():
    weights = convert_efficientnet_lite0()
    return timm.create_model(
        "roi_tf_efficientnet_lite0_add_l1", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))
    ).eval()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "compile"])
def test_float32_runtimes_give_the_eager_answers_on_the_real_coco_photos(imagenet_add_l1, runtime):
    runner = prepare_runner(imagenet_add_l1, "fp32", runtime)
    regions = 0
    for photo, masks in _coco_photos():
        expected = predict_regions(imagenet_add_l1, photo, masks, topk=5)
        for alone, served in zip(expected, predict_regions(runner, photo, masks, topk=5), strict=True):
            assert [p["label"] for p in served] == [p["label"] for p in alone]
            assert served[0]["probability"] == pytest.approx(alone[0]["probability"], abs=1e-4)
            regions += 1
    assert regions >= 10


@pytest.mark.slow
def test_int8_stays_near_the_float32_answer_on_the_real_coco_photos(imagenet_add_l1):
    """int8 (calibrated on other photos) keeps its top-1 within float32's top-5 and the float32 top-1's
    probability within 0.25. It does not keep every top-1: with ImageNet's 1000 classes, answers of 0.2-0.3 flip
    between neighbours (benchmarks/serving_runtimes.py counts them; the demo's trained model loses < 1 point)."""
    runner = prepare_runner(imagenet_add_l1, "int8", calibration=_calibration(imagenet_add_l1))
    assert runner.runtime == "onnxruntime"
    differences = []
    for photo, masks in _coco_photos():
        expected = predict_regions(imagenet_add_l1, photo, masks, topk=5)
        served = predict_regions(runner, photo, masks, topk=imagenet_add_l1.num_classes)
        for alone, ranked in zip(expected, served, strict=True):
            assert ranked[0]["label"] in [p["label"] for p in alone]
            probability = {p["label"]: p["probability"] for p in ranked}[alone[0]["label"]]
            differences.append(abs(probability - alone[0]["probability"]))
    assert len(differences) >= 10
    assert max(differences) < 0.25
    assert max(differences) > 1e-3  # quantised indeed: not the float32 graph


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "roi_resnet18_add_l3",
        "roi_resnet18_crop",
        "roi_resnet18_mul_all",
        "roi_vit_small_patch16_224_add_l3",
        "roi_deit_small_distilled_patch16_224_mul_all",
    ],
)
def test_the_onnx_graph_takes_the_photo_and_any_number_of_masks(name):
    """One exported graph for 1 and for 7 masks, equal to eager forward_regions: the trunk-sharing variant, the
    crop (RoiAlign) and a variant merging at every stage."""
    model = make_model(name).eval()
    randomize_side_branch(model, std=0.1)
    runner = prepare_runner(model, "fp32", "onnxruntime")
    size = model.pretrained_cfg["input_size"][-1]
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, size, size, generator=generator)
    for count in (1, 7):
        masks = (torch.rand(count, size, size, generator=generator) > 0.6).float()
        with torch.inference_mode():
            expected = model.forward_regions(image, masks)
        torch.testing.assert_close(runner.forward_regions(image, masks), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ServingError, match=f"input size {size}x{size}, got 48x48"):
        runner.forward_regions(torch.zeros(3, 48, 48), torch.ones(1, 48, 48))


def test_options_that_do_not_exist_are_refused_with_what_to_use():
    model = make_model("roi_resnet18_add_l1").eval()
    refused = {
        ("int8", "eager"): "int8 runs on ONNX Runtime's static quantisation: use --runtime onnxruntime",
        ("bf16", "onnxruntime"): "ONNX Runtime serves fp32 and int8",
        ("fp16", None): "unknown precision 'fp16': expected one of fp32, bf16, int8",
        ("fp32", "tensorrt"): "unknown runtime 'tensorrt'",
        ("int8", None): "int8 needs calibration regions: --calibration DATASET",
    }
    for (precision, runtime), message in refused.items():
        with pytest.raises(ServingError, match=message):
            prepare_runner(model, precision, runtime)
        with pytest.raises(ServingError, match=message):
            ServingOptions(precision, runtime)
    with pytest.raises(ServingError, match="--calibration goes with --precision int8, not fp32"):
        ServingOptions("fp32", calibration="some/dataset")
    with pytest.raises(ServingError, match="eval mode"):
        prepare_runner(make_model("roi_resnet18_add_l1").train())


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_where_it_would_be_emulated():
    model = make_model("roi_resnet18_add_l1").eval()
    if not cpu_has_bf16():
        capability = torch.backends.cpu.get_cpu_capability()
        with pytest.raises(ServingError, match=f"bf16 needs a CPU with bf16 instructions .* this one has {capability}"):
            prepare_runner(model, "bf16")
        return
    image, masks = torch.randn(3, 64, 64), (torch.rand(4, 64, 64) > 0.5).float()
    with torch.inference_mode():
        expected = model.forward_regions(image, masks)
    assert prepare_runner(model, "fp32").group_size(16, 224, 224) == 1  # float32 on a CPU: one mask a forward
    runner = prepare_runner(model, "bf16")
    # oneDNN's bf16 wants channels-last and batches: the weights laid out so, the masks eight at a time at 224x224
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert runner.group_size(16, 224, 224) == 8 and runner.group_size(3, 224, 224) == 3
    logits = runner.forward_regions(image, masks)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=0.1, rtol=0.05)
    batch = torch.cat([image.expand(4, -1, -1, -1), masks[:, None]], 1)  # regions of one photo, packed
    torch.testing.assert_close(runner(batch), expected, atol=0.1, rtol=0.05)


def test_the_commands_refuse_bad_options_before_loading_anything(tmp_path, capsys):
    photo = tmp_path / "missing.png"
    code = main(["predict", "--model", "roi_resnet18_add_l1", "--image", str(photo), "--mask", "m.png",
                 "--precision", "int8", "--runtime", "eager"])  # fmt: skip
    assert code == 2 and "use --runtime onnxruntime" in capsys.readouterr().err
    code = main(["eval", "--model", "x", "--dataset", "y", "--out", str(tmp_path), "--precision", "int8"])
    assert code == 2 and "int8 needs calibration regions" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_on_onnxruntime_gives_eager_results_and_says_how_it_served(tmp_path):
    """The same metrics through the exported graph as eagerly: eval routes every region through the runner."""
    fixture = write_coco_fixture(tmp_path / "src")
    build_region_dataset(
        CocoRegions(fixture["images_dir"], fixture["annotations"]), tmp_path / "regions", split="train", progress=False
    )
    model = make_model("roi_resnet18_add_l3", num_classes=80)
    randomize_side_branch(model, std=0.5)
    save_model(model, tmp_path / "model", label_names=COCO_CLASSES)
    results = {}
    for runtime in ("eager", "onnxruntime"):
        out = tmp_path / runtime
        args = ["eval", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "regions"), "--split",
                "train", "--out", str(out), "--runtime", runtime, "--probes"]  # fmt: skip
        assert main(args) == 0
        results[runtime] = json.loads((out / "results.json").read_text())["models"][str(tmp_path / "model")]
    eager, served = results["eager"], results["onnxruntime"]
    assert served["serving"] == dict(precision="fp32", runtime="onnxruntime")
    assert eager["serving"] == dict(precision="fp32", runtime="eager")
    assert served["metrics"]["confusion_matrix"] == eager["metrics"]["confusion_matrix"]
    for probe in eager["probes"]:
        assert served["probes"][probe]["pooled_accuracy"] == eager["probes"][probe]["pooled_accuracy"], probe
    assert eager["metrics"]["num_regions"] >= 5


def test_a_runner_is_what_predict_regions_takes_and_eager_fp32_is_the_default():
    model = make_model("roi_resnet18_add_l1").eval()
    randomize_side_branch(model, std=0.5)
    photo = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    masks = [np.zeros((80, 100), np.uint8) for _ in range(3)]
    for number, mask in enumerate(masks):
        mask[10 * number : 10 * number + 30, 20:70] = 1
    runner = prepare_runner(model)
    assert isinstance(runner, RegionRunner) and (runner.precision, runner.runtime) == ("fp32", "eager")
    assert predict_regions(runner, photo, masks) == predict_regions(model, photo, masks)


@pytest.mark.slow
def test_the_app_serves_its_models_through_the_runner_it_was_given(tmp_path):
    from PIL import Image

    from roi_attention.app import classify, load_app_models

    model = make_model("roi_resnet18_add_l3").eval()
    randomize_side_branch(model, std=0.5)
    save_model(model, tmp_path / "model", label_names=["cat", "cup", "dog", "person", "spoon"])
    models, message = load_app_models([f"mine={tmp_path / 'model'}"], ServingOptions(runtime="onnxruntime"))
    served = models["mine"]
    assert message is None and (served.runner.precision, served.runner.runtime) == ("fp32", "onnxruntime")
    assert "served fp32 on onnxruntime" in served.describe("mine")
    photo = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    masks = [np.zeros((120, 160), np.uint8), np.zeros((120, 160), np.uint8)]
    masks[0][10:60, 20:90], masks[1][50:110, 80:150] = 1, 1
    Image.fromarray(photo).save(tmp_path / "photo.png")
    for number, mask in enumerate(masks):
        Image.fromarray(mask * 255).save(tmp_path / f"mask{number}.png")
    files = [str(tmp_path / f"mask{number}.png") for number in range(2)]
    _, _, answers = classify(models, dict(background=str(tmp_path / "photo.png"), layers=[]), files, ["mine"])
    expected = predict_regions(served.model, photo, masks, topk=5)  # eager, the saved model's class names
    assert [[t["label"] for t in a["top"]] for a in answers] == [[p["label"] for p in e] for e in expected]
    assert answers[0]["top"][0]["probability"] == pytest.approx(expected[0][0]["probability"], abs=1e-4)


def test_a_second_start_takes_its_graph_from_the_cache_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ROI_ATTENTION_GRAPH_CACHE", str(tmp_path / "graphs"))
    model = make_model("roi_resnet18_add_l1").eval()
    randomize_side_branch(model, std=0.1)
    size = model.pretrained_cfg["input_size"][-1]
    image, masks = torch.randn(3, size, size), (torch.rand(3, size, size) > 0.5).float()
    expected = prepare_runner(model, "fp32", "onnxruntime").forward_regions(image, masks)
    (entry,) = (tmp_path / "graphs").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert sorted(f.name for f in entry.iterdir()) == ["entry.json", "model.onnx"]  # nothing staged left behind
    assert {stat.S_IMODE(f.stat().st_mode) for f in entry.iterdir()} == {0o600}

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patched:
        patched.setattr(torch.onnx, "export", no_export)
        cached = prepare_runner(model, "fp32", "onnxruntime")
    torch.testing.assert_close(cached.forward_regions(image, masks), expected, rtol=0, atol=0)

    graph = entry / "model.onnx"
    damaged = bytearray(graph.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    graph.write_bytes(bytes(damaged))
    with pytest.warns(UserWarning, match="is damaged \\(its checksum does not match\\); rebuilding it"):
        rebuilt = prepare_runner(model, "fp32", "onnxruntime")
    torch.testing.assert_close(rebuilt.forward_regions(image, masks), expected, rtol=0, atol=0)
    assert (entry / "entry.json").is_file()

    with torch.no_grad():
        model.get_classifier().bias.add_(1.0)  # other weights: another entry, never the old graph
    changed = prepare_runner(model, "fp32", "onnxruntime")
    assert len(list((tmp_path / "graphs").iterdir())) == 2
    torch.testing.assert_close(changed.forward_regions(image, masks), expected + 1.0, atol=1e-4, rtol=1e-4)


def test_the_graph_cache_keeps_its_most_recently_used_entries(tmp_path):
    cache = GraphCache(tmp_path)
    for number in range(5):
        entry = tmp_path / f"entry{number}"
        entry.mkdir()
        (entry / "entry.json").write_text("{}")
        os.utime(entry / "entry.json", (1000 + number, 1000 + number))
    cache.prune(keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry2", "entry3", "entry4"]


def test_int8_below_its_tolerance_says_so_with_the_figures_and_what_to_use_instead():
    from roi_attention.serving import _warn_below_tolerance

    with pytest.warns(Int8AgreementWarning) as caught:
        _warn_below_tolerance(Int8Agreement(regions=20, agreeing=16, sure=5, sure_agreeing=5))
    message = str(caught[0].message)
    assert message.startswith("int8 top-1 agrees with float32 on 80% of 20 held-out calibration regions (100% of the 5")
    assert "below the tolerance (90%, 98% where sure)" in message
    assert "--precision fp32 --runtime onnxruntime" in message
    for within in (Int8Agreement(20, 19, 5, 5), Int8Agreement(20, 18, 0, 0)):
        assert within.within_tolerance
    assert not Int8Agreement(100, 95, 50, 48).within_tolerance  # 96% where sure


def test_int8_agreement_counts_the_misses_at_near_ties_of_float32():
    """Regions whose float32 top two are within NEAR_TIE_MARGIN are counted apart, and the warning says how many of
    int8's misses they hold: four regions built by hand (margins 0.01, 0.02, 0.3, 0.6), int8 missing the first and
    the third."""
    from roi_attention.serving import NEAR_TIE_MARGIN, _int8_agreement

    assert NEAR_TIE_MARGIN == 0.05
    expected = [torch.tensor(p) for p in ([0.40, 0.39, 0.21], [0.35, 0.33, 0.32], [0.6, 0.3, 0.1], [0.8, 0.2, 0.0])]
    int8_top1 = [1, 0, 2, 0]

    class Answers:  # an ONNX Runtime session's run(): the logits of the region it is given
        def run(self, outputs, feeds):
            logits = np.zeros((1, 3), dtype=np.float32)
            logits[0, int(feeds["masks"].reshape(-1)[0])] = 5.0
            return [logits]

    regions = [(torch.zeros(1, 3, 2, 2), torch.full((1, 1, 2, 2), float(k))) for k in int8_top1]
    agreement, _ = _int8_agreement(expected, Answers(), regions)
    assert agreement == Int8Agreement(regions=4, agreeing=2, sure=2, sure_agreeing=1, near_ties=2, near_tie_agreeing=1)
    assert str(agreement).endswith(
        "; 1 of its 2 misses are near-ties (float32's top two within 0.05), where any rounding can swap them"
    )
    assert str(Int8Agreement(4, 4, 0, 0, 2, 2)).endswith("(float32 is sure on none of them, p >= 0.5)")
    assert "; its one miss is a near-tie (" in str(Int8Agreement(4, 3, 0, 0, 2, 1))
    assert "; its one miss is not a near-tie (" in str(Int8Agreement(4, 3, 0, 0, 2, 2))


def test_int8_bias_correction_gives_the_rounded_convolutions_float32s_mean_output(tmp_path):
    """A dense and a depthwise 3x3 convolution of the photo and an excluded one: after the correction, each
    quantised convolution with its weights rounded to int8 per output channel (torch's own fake quantisation, not
    ONNX Runtime's) gives float32's mean output on the calibration photos (photos constant per channel, so the
    mean of a window is the channel's mean); uncorrected it does not; the excluded convolution is left alone."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from roi_attention.serving import _correct_conv_biases, _correctable_convs

    rng = np.random.default_rng(0)
    shapes = dict(dense=(4, 3, 3, 3), depthwise=(3, 1, 3, 3), excluded=(2, 3, 3, 3))
    groups = dict(dense=1, depthwise=3, excluded=1)
    weights = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    biases = {name: rng.normal(size=shape[0]).astype(np.float32) for name, shape in shapes.items()}
    nodes = [helper.make_node("Conv", ["image", f"{n}_w", f"{n}_b"], [n], name=n, group=groups[n]) for n in shapes]
    channels = dict(image=3, masks=1)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 6, 6]) for n, c in channels.items()]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in shapes]
    initializers = [numpy_helper.from_array(weights[n], f"{n}_w") for n in shapes]
    initializers += [numpy_helper.from_array(biases[n], f"{n}_b") for n in shapes]
    graph = helper.make_graph(nodes, "convs", inputs, outputs, initializers)
    path, corrected = str(tmp_path / "float.onnx"), str(tmp_path / "corrected.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    channel_values = rng.normal(1.0, 2.0, size=(5, 1, 3, 1, 1)).astype(np.float32)
    regions = [(torch.from_numpy(v).expand(1, 3, 6, 6).contiguous(), torch.zeros(1, 1, 6, 6)) for v in channel_values]
    assert [node.name for node in _correctable_convs(onnx.load(path), ["excluded"])] == ["dense", "depthwise"]
    _correct_conv_biases(path, corrected, regions, excluded=["excluded"], reduce_range=False)
    new_biases = {t.name: numpy_helper.to_array(t) for t in onnx.load(corrected).graph.initializer}
    assert np.array_equal(new_biases["excluded_b"], biases["excluded"])

    def mean_output(name: str, bias: np.ndarray, rounded: bool) -> np.ndarray:
        weight = torch.from_numpy(weights[name])
        if rounded:
            scale = weight.flatten(1).abs().amax(1) / 127
            zero = torch.zeros(len(scale), dtype=torch.int32)
            weight = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)
        bias = torch.tensor(bias)
        convolved = [torch.nn.functional.conv2d(image, weight, bias, groups=groups[name]) for image, _ in regions]
        return torch.cat(convolved).mean((0, 2, 3)).numpy()

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = [{"image": image.numpy(), "masks": mask.numpy()} for image, mask in regions]
    graph_means = np.stack([session.run(["dense"], feed)[0] for feed in feeds]).mean((0, 1, 3, 4))
    exact = {name: mean_output(name, biases[name], rounded=False) for name in shapes}
    np.testing.assert_allclose(graph_means, exact["dense"], rtol=1e-5, atol=1e-5)  # the graph computes what torch does
    for name in ("dense", "depthwise"):
        with_correction = mean_output(name, new_biases[f"{name}_b"], rounded=True)
        np.testing.assert_allclose(with_correction, exact[name], rtol=0, atol=1e-5)
        assert np.abs(mean_output(name, biases[name], rounded=True) - exact[name]).max() > 1e-3, name


@pytest.mark.slow
def test_int8_keeps_a_crops_box_in_float32_and_quantises_the_network():
    """The crop's box is computed from the mask (min/max of its pixels, scaled): quantised to uint8 it moved the
    crop by pixels (ImageNet Lite0 crop: top-1 agreement with float32 60% on regions of real photos, 74% with the
    box and the first convolution in float32; benchmarks/serving_runtimes.py)."""
    import onnx

    model = make_model("roi_resnet18_crop").eval()
    runner = prepare_runner(model, "int8", calibration=_calibration(model))
    graph = onnx.load(GraphCache().entry(model, "int8", _single(_calibration(model))).folder / "model.onnx").graph
    producer = {output: node for node in graph.node for output in node.output}
    (roi_align,) = [node for node in graph.node if node.op_type == "RoiAlign"]
    seen, stack = set(), list(roi_align.input[1:])
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), node.name
            stack += list(node.input)
    assert len(seen) > 10  # the box's arithmetic, all float
    _, *other_convs = [node for node in graph.node if node.op_type == "Conv"]  # the first is chosen by measurement
    assert all(producer[conv.input[1]].op_type == "DequantizeLinear" for conv in other_convs)
    assert runner.int8_agreement is not None and runner.int8_agreement.regions >= 2


def _single(groups):
    from roi_attention.serving import _single_regions

    return _single_regions(groups)
