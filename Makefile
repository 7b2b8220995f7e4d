# Two commands matter: `make demo` (set up, then run the demo on the embedded default) and
# `make test` (set up with the dev extras, then run the whole suite). Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q
# torch is pinned here (==2.13.0, the release our results are checked against; pyproject.toml's
# metadata accepts a tested range, so that Onshore can share an environment with other torch tools)
# and installed first, alone, so that pip never resolves a newer torch or pulls the multi-GB CUDA
# build while it solves the rest. Our machines reach PyPI only, where pip finds the CPU build of this
# pin; set TORCH_INDEX to an extra index (e.g. PyTorch's CPU or CUDA wheel index) where that is
# reachable and wanted.
TORCH_INDEX ?=
TORCH_PIN := torch==2.13.0

.PHONY: demo test setup setup-dev browser softhsm lint bench clean client-wheel messages lerobot-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel

$(VENV)/.torch: $(BIN)/python
	$(PIP_INSTALL) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) '$(TORCH_PIN)'
	touch $@

setup: $(VENV)/.torch
	$(PIP_INSTALL) -e . '$(TORCH_PIN)'

# openpi-client (PyPI) drives `onshore serve --protocol openpi` in the tests. Installed without its
# dependencies: its metadata asks for numpy<2, which our pinned torch stack does not use, and the
# modules the tests import need only msgpack, numpy and websockets, which we install anyway.
setup-dev: $(VENV)/.torch browser softhsm
	$(PIP_INSTALL) -e '.[dev]' '$(TORCH_PIN)'
	$(PIP_INSTALL) --no-deps 'openpi-client==0.1.2'

# The dashboard's browser tests drive Debian's headless Chromium through its chromedriver (never a
# downloaded driver). Installed when missing and we are root (CI is); otherwise say what to install.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "dashboard browser tests need chromium and chromium-driver: sudo apt-get install -y chromium chromium-driver" >&2; exit 1; fi

# PKCS#11 custody tests run against Debian's SoftHSM2, a software token (docs/custody.md).
softhsm:
	@if command -v softhsm2-util >/dev/null && [ -f /usr/lib/softhsm/libsofthsm2.so ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2; \
	else echo "PKCS#11 custody tests need softhsm2: sudo apt-get install -y softhsm2" >&2; exit 1; fi

demo: setup
	$(BIN)/onshore demo

test: setup-dev
	$(MAKE) lerobot-venv  # after setup-dev: its import check reads .venv's packages
	$(BIN)/python -m pytest -q

# LeRobot itself, for tests/test_lerobot_real.py and bench/lerobot_bench.py: lerobot 0.4.4 requires
# torch<2.11 and its dependencies resolve a multi-GB CUDA torch, so it cannot join .venv. This
# separate virtualenv gets lerobot and only the light packages its dataset and policy modules import,
# each from PyPI by name with --no-deps (so pip never touches torch), and reads torch, numpy,
# pyarrow, pandas... from .venv through a .pth file. PyPI's torchvision is built against CUDA torch:
# bench/lerobot_side/torchvision_cpu.py skips its op registrations (LeRobot's code we run calls no
# torchvision op). About 150 MB of wheels, once.
LEROBOT_VENV := .lerobot-venv
LEROBOT_PKGS := lerobot==0.4.4 torchvision==0.28.0 datasets==4.8.5 huggingface-hub==0.35.3 draccus==0.10.0 \
	transformers==4.57.6 tokenizers==0.22.2 diffusers==0.35.2 accelerate==1.16.0 av==15.1.0 einops==0.8.2 \
	termcolor==3.3.0 jsonlines==4.0.0 deepdiff==9.1.0 orderly-set==5.5.0 cachebox==6.2.10 dill==0.4.1 \
	xxhash==4.1.0 multiprocess==0.70.19 requests==2.34.2 httpx==0.29.0 typing-inspect==0.9.0 \
	mypy-extensions==1.2.0 mergedeep==1.3.4 pyserial==3.5 future==1.0.0

lerobot-venv: $(LEROBOT_VENV)/.done

$(LEROBOT_VENV)/.done: $(VENV)/.torch bench/lerobot_side/torchvision_cpu.py
	rm -rf $(LEROBOT_VENV) && $(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install --disable-pip-version-check -q --no-deps $(LEROBOT_PKGS)
	sp=$$($(LEROBOT_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > $$sp/zz_onshore_venv.pth && \
	cp bench/lerobot_side/torchvision_cpu.py $$sp/ && echo 'import torchvision_cpu' > $$sp/torchvision_cpu.pth
	$(LEROBOT_VENV)/bin/python -c 'import torch, lerobot.policies.act.modeling_act; print("lerobot", lerobot.__version__, "torch", torch.__version__)'
	touch $@

# The message catalogue (onshore.i18n, babel.cfg): extract what people read from the source and the
# dashboard's templates, merge it into each language's .po (then translate the new entries there:
# an empty msgstr shows English), and compile the .mo files that ship in the package.
# tests/test_i18n.py fails while a .po or .mo is behind the source. Needs the dev extras (Babel).
messages:
	pot=$$(mktemp --suffix=.pot) && \
	$(BIN)/pybabel extract -F babel.cfg --no-location --sort-output --project=onshore \
		--add-comments=TRANSLATORS: -o $$pot src/onshore >/dev/null && \
	$(BIN)/pybabel update -i $$pot -d src/onshore/locale -D onshore -l ja --init-missing --ignore-obsolete \
		--no-fuzzy-matching && \
	rm -f $$pot
	$(BIN)/pybabel compile -d src/onshore/locale -D onshore --statistics

lint: setup-dev
	$(BIN)/ruff check src tests bench

bench: setup-dev
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# onshore-client: the torch-free client, envelope and OPC UA bridge as a wheel of their own, for the
# computer next to the machine (client/pyproject.toml lists its modules; docs/serving.md).
client-wheel: $(BIN)/python
	$(BIN)/pip wheel --disable-pip-version-check -q --no-deps -w dist ./client

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) demo-workspace demo-parties .pytest_cache client/build src/onshore_client.egg-info
