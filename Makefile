# Set-up and checks. `make demo`, `make test` and `make test-all` each create .venv and install everything on first use,
# at the versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision must be a matching pair (timm needs torchvision).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Every dependency at the version the suite passed with (`make lock` refreshes it); empty: the newest releases.
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
LOCK_VENV := .venv-lock

.PHONY: setup fashion-mnist browser demo test test-all lock lint models-table app space
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) $(TORCH_SPEC)
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) -e '.[dev]'
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

# The default tier: every behaviour on a representative set of models (the ten slowest tests and the total printed).
test: $(STAMP) fashion-mnist browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" --durations=10

# Both tiers: the default one and the rest (the registry's whole cross product, exports, real-size Hub transfers,
# the benchmarks' real runs). CI runs this.
test-all: $(STAMP) fashion-mnist browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest --durations=10

# Refresh constraints.txt: a fresh environment with the newest releases the project's ranges allow, both tiers run
# in it, and its versions become the constraints only when they pass.
lock:
	rm -rf $(LOCK_VENV)
	$(MAKE) setup VENV=$(LOCK_VENV) CONSTRAINTS=
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^roi[-_]attention' > constraints.txt.new
	$(MAKE) test-all VENV=$(LOCK_VENV) CONSTRAINTS=
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

app: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/roi-attention app

# A folder to upload as a Hugging Face Space: space/ with the roi_attention package beside its app.py.
space:
	rm -rf dist/space && mkdir -p dist && cp -r space dist/space && cp -r roi_attention dist/space/
	find dist/space -name __pycache__ -prune -exec rm -rf {} +

models-table: $(STAMP)
	$(BIN)/roi-attention models --markdown
