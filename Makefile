# `make test` and `make demo` set everything up on a fresh machine: a virtual environment with the
# project installed (.venv), Fashion-MNIST from the Debian package dataset-fashion-mnist, and (for the test of
# the Ray dashboard in a real browser) Debian's chromium.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# $(call apt_install,FILE,PACKAGE): install the Debian package unless FILE exists; nothing where apt-get is missing
apt_install = if [ ! -e $(1) ] && command -v apt-get >/dev/null; then \
		echo "installing $(2)"; \
		$(SUDO) apt-get install -y -q $(2) || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(2)); \
	fi

.PHONY: test demo lint data browser install clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/.installed

data:
	@$(call apt_install,$(FASHION_MNIST),dataset-fashion-mnist)

browser:
	@$(call apt_install,$(CHROMIUM),chromium)

lint: install
	$(BIN)/ruff check prunenas tests experiments

test: install data browser lint
	$(BIN)/python -m pytest -q

demo: install data
	$(BIN)/prunenas search experiments/quickstart.yaml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
