# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
TPVGG   := $(VENV)/bin/tp-vgg
STAMP   := $(VENV)/.installed-stamp
PIP_OPTS ?= -q --disable-pip-version-check

.PHONY: demo test test-slow install clean bench gpu-check tutorial

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_OPTS) -c constraints.txt -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import tp_vgg, torchvision, torch_pruning, fvcore"
	touch $(STAMP)

# The whole pipeline on scikit-learn's bundled digits (offline): train a CIFAR-form VGG, prune half
# of its channels, fine-tune, and print top-1, MACs and params before and after.
demo: $(STAMP)
	$(TPVGG) train --model cifar_vgg11_bn --width 0.25 --data digits --epochs 6 --progress plain --out runs/demo/train
	$(TPVGG) prune --checkpoint runs/demo/train/last.pt --ratio 0.5 --finetune-epochs 4 --data digits --progress plain --out runs/demo
	$(TPVGG) eval --checkpoint runs/demo/pruned.pt --data digits
	$(PY) -c "import torch; torch.load('runs/demo/pruned.pt', weights_only=True); print('runs/demo/pruned.pt loads with weights_only=True')"

# docs/tutorial.md's figures and plot, again (examples/four_views.py, ~15 min on 2 cores): CIFAR-10
# from data/cifar10-jpeg, extracted from ../shared/data/cifar10-jpeg.tar.gz when missing.
CIFAR_DIR ?= data/cifar10-jpeg
CIFAR_TAR ?= ../shared/data/cifar10-jpeg.tar.gz
tutorial: $(STAMP)
	test -d $(CIFAR_DIR) || (mkdir -p $(dir $(CIFAR_DIR)) && tar xzf $(CIFAR_TAR) -C $(dir $(CIFAR_DIR)))
	$(PY) examples/four_views.py --data-dir $(CIFAR_DIR) --out docs/tutorial --page docs/tutorial.md

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The GPU check (benchmarks/gpu.sh): CUDA tests, then cifar_vgg16_bn train -> prune 4x -> recover on
# CIFAR-10. Needs a CUDA machine and data/cifar10-jpeg (or .device/ staged by ../shared/device-prep.sh).
gpu-check:
	bash benchmarks/gpu.sh

clean:
	rm -rf runs build *.egg-info
