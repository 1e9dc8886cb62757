"""The paper's published accuracies (Eppel 2018, Tables 1-4): a reference, never a result of this project."""

from __future__ import annotations

# Column order of every table: Fig. 3c, 3b, 3e, 3d, 3f, 3g, 2a (hard attention 1), hard attention 2.
PAPER_COLUMNS = ("add_l1", "mul_l1", "add_l3", "mul_l3", "add_all", "mul_all", "blackout_image", "blackout_l1")

# (dataset, metric) -> (table number, rows "size bin: percentages in PAPER_COLUMNS order"); "all" = all sizes.
_TABLES: dict[tuple[str, str], tuple[int, str]] = {
    ("coco", "mean_class_accuracy"): (
        1,
        """0-1000: 68 68 54 51 67 66 45 48
        1000-2000: 80 80 75 70 80 79 65 68
        2000-4000: 84 82 80 75 83 83 72 74
        4000-8000: 85 85 83 80 85 85 76 79
        8000-16000: 87 86 85 81 86 86 80 81
        16000-32000: 88 87 86 82 87 87 82 84
        32000-64000: 85 85 85 80 85 85 79 81
        64000-128000: 87 86 85 79 84 85 78 82
        128000-256000: 83 81 79 78 81 83 76 80
        256000-500000: 76 70 70 66 71 73 68 72
        all: 83 83 77 73 83 82 70 72""",
    ),
    ("opensurfaces", "mean_class_accuracy"): (
        2,
        """0-1000: 25 15 11 9 17 13 9 10
        1000-2000: 49 46 27 32 42 38 40 33
        2000-4000: 49 50 46 35 39 46 33 29
        4000-8000: 57 49 51 40 44 53 39 34
        8000-16000: 53 51 47 41 50 50 41 35
        16000-32000: 56 57 55 46 52 54 43 39
        32000-64000: 59 56 54 49 53 56 48 46
        64000-128000: 66 65 61 60 64 64 54 52
        128000-256000: 72 69 77 65 66 68 62 55
        256000-500000: 71 72 72 65 71 70 68 63
        500000-1000000: 71 78 71 68 77 79 70 71
        all: 52 50 46 41 46 49 40 37""",
    ),
    ("coco", "pooled_accuracy"): (
        3,
        """0-1000: 75 75 58 56 76 75 57 58
        1000-2000: 83 83 77 74 83 82 71 73
        2000-4000: 84 84 80 78 84 84 75 77
        4000-8000: 85 86 83 81 85 85 78 80
        8000-16000: 87 87 85 83 87 87 81 83
        16000-32000: 90 89 87 85 89 88 85 86
        32000-64000: 91 90 89 87 90 89 86 87
        64000-128000: 91 91 90 88 91 90 87 88
        128000-256000: 90 89 87 86 88 88 86 86
        256000-500000: 90 89 85 83 88 87 84 85
        all: 82 82 73 71 82 81 70 71""",
    ),
    ("opensurfaces", "pooled_accuracy"): (
        4,
        """0-1000: 32 23 18 17 21 22 18 20
        1000-2000: 64 67 56 57 60 61 51 51
        2000-4000: 72 71 66 62 66 71 58 60
        4000-8000: 73 72 72 69 69 73 61 63
        8000-16000: 77 75 75 72 74 77 66 66
        16000-32000: 80 79 78 76 76 79 71 70
        32000-64000: 82 81 81 79 79 82 77 75
        64000-128000: 84 84 84 83 84 84 80 79
        128000-256000: 90 90 90 88 90 90 86 87
        256000-500000: 91 90 91 89 92 90 91 90
        500000-1000000: 89 91 87 88 91 91 88 89
        all: 80 78 78 75 77 79 72 72""",
    ),
}


def paper_reference(dataset: str, metric: str, variant: str) -> tuple[int, dict[str, float]] | None:
    """``(table number, {size bin or "all": accuracy in [0, 1]})`` the paper reports for a ResNet50 ``variant``
    on ``dataset`` (``coco`` or ``opensurfaces``); None when the paper has no such column."""
    if (dataset, metric) not in _TABLES or variant not in PAPER_COLUMNS:
        return None
    table, text = _TABLES[(dataset, metric)]
    column = PAPER_COLUMNS.index(variant)
    rows = (line.strip().split(":") for line in text.splitlines())
    return table, {name: int(values.split()[column]) / 100 for name, values in rows}
