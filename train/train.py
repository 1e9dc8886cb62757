"""Fine-tune an ROI-attention model on a region dataset: the checkout's entry to the package's loop.

    accelerate launch train/train.py --config train/configs/coco_roi_resnet50_add_l1.yaml [--key value ...]

is the same as ``accelerate launch -m roi_attention.train --config ...`` (which works from an installed wheel, in
any folder) and ``roi-attention train --config ...``; see train/README.md and ``roi_attention/train/loop.py``.
"""

import sys

from roi_attention.train import main

if __name__ == "__main__":
    sys.exit(main())
