"""Shared helpers: tests run offline, on small inputs, over the whole ROI registry."""

import copy
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Converted weights go to a fresh folder, never the user's cache.
os.environ["ROI_ATTENTION_CACHE"] = tempfile.mkdtemp(prefix="roi-attention-test-cache-")

from pathlib import Path

import pytest
import timm
import torch

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.models import VARIANTS, model_cfgs

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


ATTENTION_MODELS = [name for name in ALL_MODELS if VARIANTS[variant_of(name)].merge in ("add", "mul")]
# One small backbone of each family, for the slower checks.
SMALL_MODELS = [name for name in ALL_MODELS if backbone_of(name) in ("resnet18", "tf_efficientnet_lite0")]


# The last model make_model built and the RNG state right after building it: the tests of one model run together
# (pytest_collection_modifyitems), and each gets its own copy, as if it had been built afresh with seed 0.
_LAST_BUILT: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}


def make_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, num_classes=5, **kwargs)`` in eval mode, built with seed 0."""
    kwargs.setdefault("num_classes", NUM_CLASSES)
    key = f"{name} {sorted(kwargs.items())!r}"
    if key not in _LAST_BUILT:
        _LAST_BUILT.clear()
        torch.manual_seed(0)
        _LAST_BUILT[key] = (timm.create_model(name, **kwargs).eval(), torch.get_rng_state())
    model, rng_state = _LAST_BUILT[key]
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


def plain_backbone(model) -> torch.nn.Module:
    """The plain timm backbone with the ROI model's backbone weights: the independent reference (built on the meta
    device, its weights are the ROI model's)."""
    with torch.device("meta"):
        plain = timm.create_model(model.backbone_name, num_classes=model.num_classes)
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
