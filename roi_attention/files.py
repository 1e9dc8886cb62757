"""Files that appear complete or not at all."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def writing_whole(path: str | os.PathLike) -> Iterator[Path]:
    """A staging path beside ``path`` to write to; moved onto ``path`` when the block ends without an error, and
    removed when it raises. Concurrent writers of one path each stage their own file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_whole(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` so that the file appears complete or not at all."""
    with writing_whole(path) as partial:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
