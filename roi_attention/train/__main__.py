"""``python -m roi_attention.train`` / ``accelerate launch -m roi_attention.train``: see ``loop.py``."""

import sys

from .loop import main

sys.exit(main())
