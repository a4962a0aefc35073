# fastai-sem: every command creates what it needs (a .venv in the checkout) on a fresh machine.
SHELL := /bin/bash
PY    := .venv/bin/python
BIN   := .venv/bin
export PYTHONHASHSEED := 0

.PHONY: run test test-slow check-outputs docs bench repro defaults-study untuned-data calibration clean-venv venv-install

# nbdev-export rewrites pyproject.toml (same content, new mtime): reinstall only when its content has changed.
.venv/.done: pyproject.toml
	@if [ -f $@ ] && cmp -s pyproject.toml .venv/pyproject.installed; then touch $@; \
	else $(MAKE) --no-print-directory venv-install; fi

venv-install:
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds these machines carry on disk (CPU here, CUDA-capable elsewhere)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	cp pyproject.toml .venv/pyproject.installed
	touch .venv/.done

# System packages the tests use: Fashion-MNIST (science smoke test) and Chromium (docs browser test).
# As root they are installed with apt-get; otherwise install them yourself (the tests that need them are skipped
# until then): sudo apt-get install dataset-fashion-mnist chromium
SYSDEPS := dataset-fashion-mnist chromium
.sysdeps.done:
	@if command -v dpkg-query >/dev/null && dpkg-query -W $(SYSDEPS) >/dev/null 2>&1; then touch $@; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq $(SYSDEPS) >/dev/null && touch $@; \
	else echo "note: the Debian packages $(SYSDEPS) are missing and this is not root, so the tests that need them"; \
	  echo "      are skipped. Install them with: sudo apt-get install $(SYSDEPS)"; fi

## The main job: SEM at its defaults vs plain MixUp on the embedded Fashion-MNIST subset, 3 seeds, several metrics.
run: .venv/.done
	$(BIN)/fastai-sem compare

## The whole default test suite (notebooks, package/notebook agreement, pytest, docs in a browser).
test: .venv/.done .sysdeps.done
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean
	@if [ -n "$$(git status --porcelain -- fastai_sem nbs)" ]; then git status --porcelain -- fastai_sem nbs; \
	  echo "nbdev-export/nbdev-clean changed the files above: the notebooks and the package disagree"; exit 1; fi
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/pytest -q -m "not slow"

## Slow tests: notebook cells marked `#| slow` and pytest tests marked slow (DDP, long runs).
test-slow: .venv/.done .sysdeps.done
	$(BIN)/nbdev-test --flags slow --n-workers 2
	$(BIN)/pytest -q -m slow

## Re-execute the notebooks and print the code cells whose stored outputs differ from what the code gives now.
check-outputs: .venv/.done .sysdeps.done
	$(PY) tools/check_outputs.py

docs: .venv/.done
	$(PY) tools/build_docs.py

bench: .venv/.done
	$(PY) benchmarks/step_time.py

repro: .venv/.done .sysdeps.done
	$(PY) benchmarks/reproduce.py

clean-venv:
	rm -rf .venv .sysdeps.done

## SEM at its defaults on data they were not chosen on (MNIST-5k, scikit-learn's digits): the small CNN and ResNet-18.
untuned-data: .venv/.done .sysdeps.done
	$(PY) benchmarks/untuned_data.py --threads 1
	$(PY) benchmarks/untuned_data.py --threads 1 --archs resnet18

## Does temperature scaling take away SEM's calibration cost? Three datasets: the small CNN with MixUp and CutMix at γ 0.03,
## 0.3 and 1, ResNet-18 with MixUp at γ 0.3.
calibration: .venv/.done .sysdeps.done
	$(PY) benchmarks/calibration.py --threads 1
	$(PY) benchmarks/calibration.py --threads 1 --mix cutmix
	$(PY) benchmarks/calibration.py --threads 1 --arch resnet18 --gammas 0.3

## How SEMMixup's defaults were chosen (validation grid, selection, test table): hours of CPU; see its --help.
defaults-study: .venv/.done .sysdeps.done
	$(PY) benchmarks/defaults_study.py --grid --select --test --threads 1
	$(PY) benchmarks/defaults_study.py --grid --select --test --threads 1 --round 2
	$(PY) benchmarks/defaults_study.py --grid --select --test --threads 1 --round 3
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 4
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 5
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 7
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 8
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 9
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 10
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 11
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 12
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 13
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 14
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 15
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 16
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 17
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 18
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 19
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 20
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 21
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 22
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 23
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 24
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 25
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 26
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 27
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 28
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 29
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 30
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 31
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 32
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 33
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 34
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 35
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 36
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 37
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 38
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 39
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 40
	$(PY) benchmarks/defaults_study.py --grid --select --threads 1 --round 41
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 1 --archs resnet18 --seeds 3 4 5 --methods MixUp CutMix
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 1 --archs resnet18 --seeds 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 --methods MixUp
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 3 --archs resnet18 --seeds 3 4 5
	$(PY) benchmarks/defaults_study.py --test --threads 1 --round 6 --archs resnet18 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
