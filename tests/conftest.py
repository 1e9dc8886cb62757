"""Shared helpers: tests run offline, on small inputs, over the whole ROI registry."""

import copy
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The session's caches (converted weights, exported graphs, the Hub's downloads of subprocesses) go to one fresh
# folder, never the user's cache, removed when the session ends.
os.environ["ROI_ATTENTION_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="roi-attention-tests-"), "cache")

import pytest
import timm
import torch

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.models import BACKBONES, VARIANTS, model_cfgs
from roi_attention.models.walk import family_of

from .folder_cleanup import pytest_runtest_makereport, pytest_runtest_setup, pytest_runtest_teardown  # noqa: F401

SESSION_SCRATCH = Path(os.environ["ROI_ATTENTION_CACHE"]).parent
ALL_MODELS = timm.list_models("roi_*")
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SIZE = 64
NUM_CLASSES = 5


def variant_of(name: str) -> str:
    return model_cfgs[name]["variant"]


def backbone_of(name: str) -> str:
    return model_cfgs[name]["backbone"]


def models_with(*variants: str) -> list[str]:
    return [name for name in ALL_MODELS if variant_of(name) in variants]


def _structure(backbone: str) -> tuple[bool, int]:
    """Whether the backbone is a token family, and its parameter count (built on the meta device)."""
    with torch.device("meta"):
        model = timm.create_model(backbone)
    family = family_of(model)
    return bool(family and family.tokens), sum(p.numel() for p in model.parameters())


_STRUCTURES = {backbone: _structure(backbone) for backbone in BACKBONES}
# Vision Transformers: built for SIZE x SIZE photos in the tests (img_size), their merges are into tokens.
TOKEN_BACKBONES = tuple(backbone for backbone, (tokens, _) in _STRUCTURES.items() if tokens)
# Backbones of over 100M parameters (the ViT-L towers): the same code as a smaller member of their family (ViT-B/16
# CLIP's, which runs every test), but seconds to build; the default tier checks their config and wiring on the meta
# device, the second tier runs the registry-wide tests on their Alpha-CLIP variant and their wiring at l1 and l3.
HEAVY_BACKBONES = tuple(backbone for backbone, (_, size) in _STRUCTURES.items() if size > 100_000_000)
HEAVY_VARIANTS = ("add_l1",)
ATTENTION_MODELS = [name for name in ALL_MODELS if VARIANTS[variant_of(name)].merge in ("add", "mul")]
# One small CNN backbone of each family, for the slower checks.
SMALL_MODELS = [name for name in ALL_MODELS if backbone_of(name) in ("resnet18", "tf_efficientnet_lite0")]
CNN_MODELS = [name for name in ALL_MODELS if backbone_of(name) not in TOKEN_BACKBONES]
VIT_MODELS = [name for name in ALL_MODELS if backbone_of(name) in TOKEN_BACKBONES]

# The default tier (`make test`) takes every variant on the small backbone of each family, and on every other
# backbone the variant that merges everywhere (mul_all) and the one that shares the trunk (add_l3): every line of
# the variants' code on every backbone. The rest of the cross product is marked slow: `make test-all` runs it.
TIER_ONE_BACKBONES = ("resnet18", "tf_efficientnet_lite0", "vit_small_patch16_224")
TIER_ONE_VARIANTS = ("mul_all", "add_l3")


def in_tier_one(name: str) -> bool:
    if backbone_of(name) in HEAVY_BACKBONES:
        return False
    return backbone_of(name) in TIER_ONE_BACKBONES or variant_of(name) in TIER_ONE_VARIANTS


def tiered(names: list[str]) -> list:
    """Registry model names as test parameters, those outside the default tier marked slow (of a heavy backbone,
    only its HEAVY_VARIANTS)."""
    return [
        name if in_tier_one(name) else pytest.param(name, marks=pytest.mark.slow)
        for name in names
        if backbone_of(name) not in HEAVY_BACKBONES or variant_of(name) in HEAVY_VARIANTS
    ]


def tiered_backbones(backbones: list[str]) -> list:
    """Backbone names as test parameters, the heavy ones marked slow."""
    return [b if b not in HEAVY_BACKBONES else pytest.param(b, marks=pytest.mark.slow) for b in backbones]


# Models make_model built, with the RNG state right after each build, kept for the whole run (least recently used
# first out beyond a budget of parameter bytes): each test gets its own copy, as if it had been built afresh with
# seed 0.
_BUILT: OrderedDict[str, tuple[torch.nn.Module, torch.Tensor, int]] = OrderedDict()
BUILD_CACHE_BYTES = 3 * 2**30


def sized(name: str, size: int) -> dict[str, int]:
    """The model arguments that make ``name`` take ``size`` x ``size`` photos (a Vision Transformer's img_size)."""
    return {"img_size": size} if backbone_of(name) in TOKEN_BACKBONES else {}


def make_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, num_classes=5, **kwargs)`` in eval mode, built with seed 0 (a Vision Transformer
    for SIZE x SIZE photos)."""
    kwargs.setdefault("num_classes", NUM_CLASSES)
    if backbone_of(name) in TOKEN_BACKBONES:
        kwargs.setdefault("img_size", SIZE)
    key = f"{name} {sorted(kwargs.items())!r}"
    if key not in _BUILT:
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs).eval()
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        _BUILT[key] = (model, torch.get_rng_state(), size)
        while len(_BUILT) > 1 and sum(entry[2] for entry in _BUILT.values()) > BUILD_CACHE_BYTES:
            _BUILT.popitem(last=False)
    _BUILT.move_to_end(key)
    model, rng_state, _ = _BUILT[key]
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


def plain_backbone(model) -> torch.nn.Module:
    """The plain timm backbone with the ROI model's backbone weights: the independent reference (built on the meta
    device, its weights are the ROI model's)."""
    size = {"img_size": model.backbone.patch_embed.img_size} if model.backbone_name in TOKEN_BACKBONES else {}
    with torch.device("meta"):
        plain = timm.create_model(model.backbone_name, num_classes=model.num_classes, **size)
    plain.load_state_dict({key: value.clone() for key, value in model.backbone.state_dict().items()}, assign=True)
    return plain.eval()


def pytest_collection_modifyitems(items) -> None:
    """Within each test file, the tests of one registered model run one after another (make_model builds it once)."""
    order = {name: index for index, name in enumerate(ALL_MODELS)}

    def model_index(item) -> int:
        callspec = getattr(item, "callspec", None)
        return order.get(callspec.params.get("name"), -1) if callspec else -1

    files: dict[str, list] = {}
    for item in items:
        files.setdefault(str(item.path), []).append(item)
    items[:] = [item for group in files.values() for item in sorted(group, key=model_index)]


def pytest_unconfigure(config) -> None:
    shutil.rmtree(SESSION_SCRATCH, ignore_errors=True)


def train_with_frozen_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode with batch-norm statistics frozen: the same normalisation whatever the batch holds."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def randomize_side_branch(model, std: float = 0.5) -> None:
    """Give the side branch non-zero weights, as training would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.roi_branch.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def random_image(batch: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def box_mask(batch: int = 2, size: int = SIZE, box: tuple[int, int, int, int] = (8, 16, 40, 36)) -> torch.Tensor:
    """``(B,1,H,W)`` masks of a rectangle ``(y0, x0, y1, x1)``."""
    mask = torch.zeros(batch, 1, size, size)
    y0, x0, y1, x1 = box
    mask[:, :, y0:y1, x0:x1] = 1
    return mask


@pytest.fixture
def image() -> torch.Tensor:
    return random_image()


@pytest.fixture
def mask() -> torch.Tensor:
    return box_mask()


def fashion_mnist_available() -> bool:
    from roi_attention.data.scenes import fashion_mnist_dir

    try:
        fashion_mnist_dir()
    except FileNotFoundError:
        return False
    return True


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Fashion-MNIST is absent (Debian package dataset-fashion-mnist)"
)
