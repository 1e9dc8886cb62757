"""Peak memory of `roi-attention predict --coco-annotations` against the number of regions on one photo.

    python benchmarks/region_memory.py                           # roi_tf_efficientnet_lite0_add_l1, 10 and 5000
    python benchmarks/region_memory.py --model roi_resnet18_add_l3 --counts 10 1000

Each count runs the command in its own process (the photo: scikit-image's coffee, 600x400; the regions: random
boxes as polygons), and reads that process's peak resident memory. Before the regions went in groups, every
region of a photo was one tensor: 5000 regions at 224x224 took 4 GB more, or failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import machine

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.hub import save_model

PEAK = (
    "import atexit, resource, runpy, sys; atexit.register(lambda: print('peak_rss_mb', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)); "
    "sys.argv = ['roi-attention', *sys.argv[1:]]; runpy.run_module('roi_attention.cli', run_name='__main__')"
)


def coco_file(folder: Path, count: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(count)
    height, width = size
    annotations = []
    for index in range(count):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        w, h = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        annotations.append(dict(id=index, image_id=1, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
    path = folder / f"regions{count}.json"
    images = [dict(id=1, file_name="coffee.png", width=width, height=height)]
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[])))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="roi_tf_efficientnet_lite0_add_l1")
    parser.add_argument("--counts", nargs="*", type=int, default=[10, 5000])
    args = parser.parse_args(argv)
    from skimage import data

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        photo = data.coffee()
        Image.fromarray(photo).save(folder / "images" / "coffee.png")
        model = timm.create_model(args.model, num_classes=10)  # random weights: memory does not depend on them
        model_dir = save_model(model, folder / "model")
        side = model.pretrained_cfg["input_size"][-1]
        print(f"machine: {machine()}; {args.model} at {side}x{side}, one 600x400 photo")
        print(f"{'regions':>8} {'peak RSS MB':>12} {'one batch of all regions would be MB':>38}")
        peaks = {}
        for count in args.counts:
            coco = coco_file(folder, count, photo.shape[:2])
            out = folder / f"out{count}.json"
            command = [sys.executable, "-c", PEAK, "predict", "--model", str(model_dir), "--coco-annotations",
                       str(coco), "--images", str(folder / "images"), "--out", str(out)]  # fmt: skip
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stderr[-3000:])
                return 1
            peaks[count] = int(run.stderr.rsplit("peak_rss_mb", 1)[1].split()[0])
            naive = count * 4 * side * side * 4 / 2**20
            print(f"{count:>8} {peaks[count]:>12} {naive:>38.0f}", flush=True)
    low, high = min(args.counts), max(args.counts)
    print(f"peak RSS {high} regions / {low} regions: {peaks[high] / peaks[low]:.2f} (target: about 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
