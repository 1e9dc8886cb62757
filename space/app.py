"""The roi-attention app as a Hugging Face Space: `make space` puts this folder and the package in dist/space."""

import os

from roi_attention.app import launch

# The models to serve: a Space variable ROI_ATTENTION_MODELS (Hub ids or registered names, space-separated).
models = os.environ.get("ROI_ATTENTION_MODELS", "").split() or None
launch(models, host="0.0.0.0", port=int(os.environ.get("PORT", "7860")))
