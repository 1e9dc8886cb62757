"""Peak memory of a region-dataset build for N and factor x N photos: builds must stream.

    python benchmarks/dataset_build_memory.py --images 200 --factor 10

Each build runs in a fresh process that reports its own peak RSS; the ratio is printed with the target (< 1.2).
Photos are scikit-image's real photographs, resized to --size and repeated, each with one polygon region.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.2


def write_coco_folder(root: Path, count: int, size: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("coffee", "chelsea", "astronaut")]
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        photo = photos[index % len(photos)].resize((size, size * 2 // 3))
        Image.fromarray(np.asarray(photo)).save(images_dir / f"{index:06d}.jpg", quality=90)
        w, h = photo.size
        polygon = [w * 0.2, h * 0.2, w * 0.7, h * 0.25, w * 0.6, h * 0.8, w * 0.25, h * 0.7]
        images.append(dict(id=index + 1, file_name=f"{index:06d}.jpg", width=w, height=h))
        annotations.append(
            dict(
                id=index + 1,
                image_id=index + 1,
                category_id=47,
                iscrowd=0,
                segmentation=[polygon],
                bbox=[0, 0, 1, 1],
                area=1.0,
            )
        )
    path = root / "instances.json"
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[])))
    return images_dir, path


def build_in_this_process(images_dir: str, annotations: str, out: str) -> None:
    from roi_attention.data import CocoRegions, build_region_dataset

    start = time.perf_counter()
    report = build_region_dataset(CocoRegions(images_dir, annotations), out, progress=False)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(images=report.images_kept, regions=report.regions_kept, peak_mib=peak_mib, seconds=seconds)))


def measure(count: int, size: int, workdir: Path) -> dict:
    images_dir, annotations = write_coco_folder(workdir / f"src{count}", count, size)
    out = workdir / f"ds{count}"
    code = (
        "import sys; sys.path.insert(0, sys.argv[4]); from dataset_build_memory import build_in_this_process; "
        "build_in_this_process(sys.argv[1], sys.argv[2], sys.argv[3])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(images_dir), str(annotations), str(out), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="N, the smaller build")
    parser.add_argument("--factor", type=int, default=10, help="the larger build has factor x N photos")
    parser.add_argument("--size", type=int, default=480, help="photo width in pixels")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        small = measure(args.images, args.size, Path(workdir))
        large = measure(args.images * args.factor, args.size, Path(workdir))
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"{'photos':>8} {'regions':>8} {'peak RSS MiB':>13} {'seconds':>8} {'photos/s':>9}")
    for run in (small, large):
        rate = run["images"] / run["seconds"]
        print(f"{run['images']:>8} {run['regions']:>8} {run['peak_mib']:>13.1f} {run['seconds']:>8.1f} {rate:>9.1f}")
    verdict = "meets" if ratio < TARGET_RATIO else "MISSES"
    print(
        f"peak RSS ratio {large['images']}/{small['images']} photos: {ratio:.3f} "
        f"({verdict} the target < {TARGET_RATIO})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
