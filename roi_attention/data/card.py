"""The dataset card of a region dataset folder: its README.md, whose front matter declares the splits and classes
(``datasets`` and ``read_dataset_info`` read them there) and whose body describes the data, rendered from
``hub_cards/dataset_card.md`` with ``huggingface_hub``'s ``DatasetCard``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData
from huggingface_hub.repocard import metadata_load

from .size_bins import SIZE_BIN_EDGES, SIZE_BIN_NAMES

IMAGES, REGIONS = "images", "regions"


def dataset_metadata(splits: Sequence[str], class_names: Sequence[str], source: str = "") -> dict[str, Any]:
    """The card's front matter: the configs that let ``load_dataset(folder, "regions", split=...)`` read the
    folder, and what roi-attention needs (class names, splits, source)."""
    configs = [
        {
            "config_name": config,
            "data_files": [{"split": split, "path": f"{config}/{split}-*.parquet"} for split in splits],
            **({"default": True} if config == REGIONS else {}),
        }
        for config in (REGIONS, IMAGES)
    ]
    info = {"class_names": list(class_names), "splits": list(splits), "source": source}
    return {"configs": configs, "roi_attention": info}


def write_dataset_card(folder: Path, metadata: dict[str, Any], split_folders: dict[str, Path], load_name: str) -> Path:
    """Render the dataset card into ``folder/README.md``; each split's parquet is read from ``split_folders``;
    ``load_name`` is the dataset's folder or Hub id."""
    num_classes = len(metadata["roi_attention"]["class_names"])
    statistics = [split_statistics(path, name, num_classes) for name, path in split_folders.items()]
    card = render_dataset_card(metadata, statistics, load_name, pretty_name=Path(load_name).name)
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    return folder / "README.md"


def read_dataset_info(folder: Path) -> dict[str, Any] | None:
    """``{"class_names", "splits"}`` of a region dataset folder, or None when it is not one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    info = metadata_load(readme) or {}
    return info.get("roi_attention")


def split_statistics(folder: str | os.PathLike, split: str, num_classes: int) -> dict[str, Any]:
    """Photos, regions, and regions per class and per size bin of one split of a region dataset folder."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    labels: list[int] = []
    bins: list[int] = []
    for shard in sorted((folder / "regions").glob(f"{split}-*.parquet")):
        table = pq.read_table(shard, columns=["label", "size_bin"])
        labels += table.column("label").to_pylist()
        bins += table.column("size_bin").to_pylist()
    images = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((folder / "images").glob(f"{split}-*.parquet")))
    return dict(
        name=split,
        images=images,
        regions=len(labels),
        per_class=[labels.count(i) for i in range(num_classes)],
        per_bin=[bins.count(i) for i in range(len(SIZE_BIN_NAMES))],
    )


def _size_category(regions: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if regions < limit:
            return name
    return "1M<n<10M"


def render_dataset_card(
    metadata: dict[str, Any],
    statistics: Sequence[dict[str, Any]],
    load_name: str,
    pretty_name: str,
) -> DatasetCard:
    """The dataset card of a region dataset: ``metadata`` is its front matter (``configs`` and ``roi_attention``
    with ``class_names``, ``splits`` and ``source``), ``statistics`` one ``split_statistics`` per split."""
    info = metadata["roi_attention"]
    class_names = info["class_names"]

    def per_split(values: str, index: int) -> str:
        return ", ".join(f"{s['name']} {s[values][index]}" for s in statistics)

    generated = dict(
        pretty_name=pretty_name,
        task_categories=["image-classification"],
        tags=["roi-attention", "region-classification", "segmentation-masks"],
        size_categories=[_size_category(sum(s["regions"] for s in statistics))],
    )
    card_data = DatasetCardData(**{**metadata, **generated})
    return DatasetCard.from_template(
        card_data,
        template_path=str(files("roi_attention.hub_cards").joinpath("dataset_card.md")),
        pretty_name=pretty_name,
        load_name=load_name,
        first_split=statistics[0]["name"] if statistics else "train",
        splits=statistics,
        class_names=class_names,
        class_rows=[dict(index=i, name=n, counts=per_split("per_class", i)) for i, n in enumerate(class_names)],
        size_rows=[dict(name=n, counts=per_split("per_bin", i)) for i, n in enumerate(SIZE_BIN_NAMES)],
        size_bin_edges=", ".join(str(e) for e in SIZE_BIN_EDGES),
        source_description=info.get("source") or "",
    )
