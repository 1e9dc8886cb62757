"""timm's own model tests, unchanged, on every ROI model of two backbones and one of each other architecture.

``tests/test_models.py`` comes from the sdist of the installed timm version on PyPI (downloaded once into a cache,
never vendored) and runs in a subprocess with only the model selection made here (``-k``). Its pretrained tests
download the backbones' ImageNet weights from the Hub: olah serves them on 127.0.0.1 (weights of the right shapes,
drawn at random here: what is tested is timm's loading path, ``in_chans=1`` and ``features_only`` included).
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from roi_attention.models import BACKBONES

from .conftest import HEAVY_BACKBONES, TOKEN_BACKBONES, backbone_of
from .hub_server import OlahMirror, commit_files, git, hub_env

pytestmark = pytest.mark.slow

# Every variant on a CNN and on a Vision Transformer (the variants' code is the same on every backbone of a family).
BACKBONES_TESTED = ("resnet18", "vit_small_patch16_224")
# Backbones another one stands for: the same module types, only wider, deeper or with another activation (the ViT-L
# towers would also move 1.2 GB of weights each through the local Hub); DINOv2's fixed 518-pixel input is over
# timm's size limit, so timm's file skips every forward test of it (tests/test_vit.py runs them at 70 pixels).
STOOD_FOR = {
    "resnet34": "resnet18",
    "resnet50": "resnet18",
    "resnet101": "resnet18",
    "resnet152": "resnet18",
    "tf_efficientnet_lite1": "tf_efficientnet_lite0",
    "tf_efficientnet_lite2": "tf_efficientnet_lite0",
    "vit_base_patch16_clip_quickgelu_224": "vit_base_patch16_clip_224",
    **{backbone: "vit_base_patch16_clip_224" for backbone in HEAVY_BACKBONES},
    "vit_small_patch14_reg4_dinov2": "vit_small_patch16_224",
}
# The other backbones with the variant that merges at every stage (the other variants' code is the same).
ONE_VARIANT = tuple(
    f"roi_{backbone}_mul_all" for backbone in BACKBONES if backbone not in (*BACKBONES_TESTED, *STOOD_FOR)
)
# Every test of timm's file that takes each model of the registry (its other tests name timm's own models).
TIMM_TESTS = {
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs",
    "test_model_forward_torchscript",
    "test_model_forward_features",
    "test_model_forward_fx",
    "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
    "test_model_load_pretrained",
    "test_model_features_pretrained",
}
VIT_TIMM_TESTS = TIMM_TESTS - {"test_model_default_cfgs"} | {"test_model_default_cfgs_non_std"}
# timm checks a Vision Transformer's config with test_model_default_cfgs_non_std (it picks them by name: vit_*,
# deit*, ...); roi_vit_* is not such a name, so a file of ours runs that test of timm's, unchanged, on them.
NON_STD_CHECK = """
import pytest
import roi_attention  # noqa: F401
from tests import test_models as timm_tests

NAMES = {names!r}


@pytest.mark.parametrize("model_name", NAMES, ids=[f"1-{{name}}" for name in NAMES])
def test_model_default_cfgs_non_std(model_name):
    device = "meta" if timm_tests._HAS_DEVICE_CONTEXT else timm_tests.torch_device
    timm_tests.test_model_default_cfgs_non_std(model_name, 1, device)
"""


def timm_tests_dir() -> Path:
    """``tests/`` and ``pyproject.toml`` (its pytest settings) of the installed timm's sdist, cached per version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roi-attention"
    target = cache / f"timm-{timm.__version__}-tests"
    if (target / "tests" / "test_models.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"timm=={timm.__version__}",
                "-d",
                scratch,
            ],
            capture_output=True,
            text=True,
        )
        if download.returncode:
            pytest.skip(f"timm's sdist could not be downloaded from the package registry: {download.stderr[-500:]}")
        (sdist,) = Path(scratch).glob("timm-*.tar.gz")
        staged = Path(scratch) / "staged"
        with tarfile.open(sdist) as archive:
            top = f"timm-{timm.__version__}/"
            members = [m for m in archive.getmembers() if m.name.startswith((top + "tests/", top + "pyproject.toml"))]
            for member in members:
                member.name = member.name[len(top) :]
            archive.extractall(staged, members=members, filter="data")
        try:
            staged.rename(target)  # whole or not at all
        except OSError:
            if not (target / "tests" / "test_models.py").is_file():
                raise
    return target


@pytest.fixture(scope="module")
def backbone_hub(tmp_path_factory):
    """olah serving ``timm/{backbone}.{tag}`` for the tested backbones, as the Hub serves timm's weights."""
    root = tmp_path_factory.mktemp("timm-hub")
    mirrors = root / "mirrors"
    for backbone in (*BACKBONES_TESTED, *(name[4:].removesuffix("_mul_all") for name in ONE_VARIANT)):
        repo = mirrors / "models" / "timm" / f"{backbone}.{BACKBONES[backbone]}"
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        torch.manual_seed(0)
        weights = root / f"{backbone}.safetensors"
        save_file(timm.create_model(backbone).state_dict(), str(weights))
        commit_files(repo, {"model.safetensors": weights.read_bytes()}, "weights")
    olah = OlahMirror(root, mirrors)
    yield olah.endpoint, root / "hf-home"
    olah.close()


def test_timms_model_tests_pass_on_the_roi_models(backbone_hub, tmp_path, monkeypatch):
    # timm's file defines fewer tests on GitHub's runners: the run must not depend on where it runs.
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    tests = timm_tests_dir()
    names = [n for n in timm.list_models("roi_*") if backbone_of(n) in BACKBONES_TESTED]
    names += ONE_VARIANT
    vits = [name for name in names if backbone_of(name) in TOKEN_BACKBONES]
    non_std = tmp_path / "test_roi_models_non_std.py"
    non_std.write_text(NON_STD_CHECK.format(names=[f"{name}.{_tag(name)}" for name in vits]))
    selection = " or ".join([f"roi_{backbone}_" for backbone in BACKBONES_TESTED] + list(ONE_VARIANT))
    report = tmp_path / "report.xml"
    endpoint, hf_home = backbone_hub
    env = hub_env(endpoint, hf_home)
    env.pop("OMP_NUM_THREADS")
    env.pop("GITHUB_ACTIONS", None)  # timm's file leaves three tests out where it is set
    deselected = [f"--deselect=tests/test_models.py::test_model_default_cfgs[1-{n}.{_tag(n)}]" for n in vits]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_models.py",
            str(non_std),
            *deselected,
            "-p",
            "roi_attention",
            "-k",
            selection,
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            f"--junitxml={report}",
        ],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes[case.get("name")] = "failed" if failed else "skipped" if skipped else "passed"
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert run.returncode == 0 and not not_passed, f"{not_passed}\n{run.stdout[-3000:]}"
    for name in names:  # every test that takes registry models ran on every model, pretrained tags included
        ran = {case.split("[")[0] for case in outcomes if case.endswith((f"-{name}]", f"-{name}.{_tag(name)}]"))}
        expected = VIT_TIMM_TESTS if name in vits else TIMM_TESTS
        assert ran == expected, (name, expected ^ ran)


def _tag(name: str) -> str:
    return BACKBONES[backbone_of(name)]


def test_the_cached_sdist_holds_tests_only():
    tests = timm_tests_dir()
    assert (tests / "tests" / "test_models.py").is_file() and (tests / "pyproject.toml").is_file()
    assert not (tests / "timm").exists()  # the installed timm is the one tested, never a copy beside the tests
