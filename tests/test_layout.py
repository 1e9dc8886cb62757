"""The package's import arrows go one way: data knows nothing of the Hub or evaluation, a model knows no dataset."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "roi_attention"
# package -> the packages of roi_attention it must never import (at module level or inside functions)
FORBIDDEN = {
    "layers": {"models", "data", "hub", "evaluation", "metrics", "train", "predict", "cli", "labels", "serving"},
    "models": {"data", "hub", "evaluation", "metrics", "train", "predict", "cli", "serving"},
    "labels": {"models", "data", "hub", "evaluation", "metrics", "train", "predict", "cli", "layers", "serving"},
    "data": {"models", "hub", "evaluation", "metrics", "train", "predict", "cli", "serving"},
    "metrics": {"models", "hub", "evaluation", "train", "predict", "cli", "serving"},
    "hub": {"evaluation", "train", "predict", "cli", "serving"},
}


def _imported_packages(path: Path) -> set[str]:
    """Top-level subpackages of roi_attention that the module at ``path`` imports."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    base = list(module[:-1])  # the package a relative import starts from (for __init__.py too)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                names = [parts] if node.module else [[*parts, alias.name] for alias in node.names]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        found |= {name[1] for name in names if len(name) > 1 and name[0] == "roi_attention"}
    return found


def test_imports_go_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imported in _imported_packages(path) & FORBIDDEN.get(package, set()):
            wrong.append(f"{path.relative_to(PACKAGE.parent)} imports roi_attention.{imported}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_relative_imports():
    assert _imported_packages(PACKAGE / "hub" / "load.py") >= {"models"}
    assert _imported_packages(PACKAGE / "models" / "roi_net.py") >= {"labels", "layers"}
