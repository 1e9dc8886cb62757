# Set-up and checks. `make demo` and `make test` each create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision must be a matching pair (timm needs torchvision).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup fashion-mnist browser demo test test-fast lint models-table app space
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# imgaug ships a real photo with a real polygon (quokka) that the tests read as files; not imported.
	$(BIN)/python -m pip install -q --no-deps imgaug==0.4.0
	touch $(STAMP)

# Fashion-MNIST, for the context scenes of the demo and the scene benchmark: Debian's dataset-fashion-mnist.
fashion-mnist:
	@test -f $(FASHION_MNIST) || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist || \
	  { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; }; }

# Chromium and its driver from Debian's packages, for the app's browser tests (they skip, saying why, without).
browser:
	@test -x /usr/bin/chromedriver || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium chromium-driver || \
	  { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; } || \
	  echo "chromium could not be installed: the browser tests will skip"; }

demo: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(BIN)/roi-attention demo

test: $(STAMP) fashion-mnist browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-fast: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

app: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/roi-attention app

# A folder to upload as a Hugging Face Space: space/ with the roi_attention package beside its app.py.
space:
	rm -rf dist/space && mkdir -p dist && cp -r space dist/space && cp -r roi_attention dist/space/
	find dist/space -name __pycache__ -prune -exec rm -rf {} +

models-table: $(STAMP)
	$(BIN)/roi-attention models --markdown
