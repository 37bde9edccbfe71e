# `make test` and `make demo` set everything up on a fresh machine: a virtual environment with the
# project installed (.venv), and Fashion-MNIST from the Debian package dataset-fashion-mnist.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo lint data install clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/.installed

data:
	@if [ ! -f $(FASHION_MNIST) ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; \
		$(SUDO) apt-get install -y -q dataset-fashion-mnist \
		|| ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist); \
	fi

lint: install
	$(BIN)/ruff check prunenas tests experiments

test: install data lint
	$(BIN)/python -m pytest -q

demo: install data
	$(BIN)/prunenas search experiments/quickstart.yaml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
