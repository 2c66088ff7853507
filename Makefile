# Two entry points from a fresh clone: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean sysdeps tool

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# valgrind (for `memvirt capture`) and gcc (for the capture test) come from Debian.
sysdeps:
	@command -v valgrind >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1 || \
	  { if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind gcc >/dev/null; \
	    else echo "note: install valgrind and gcc (apt-get install valgrind gcc) for capture"; fi; }

# memvirt's Valgrind capture tool (src/memvirt/trace/mvtrace/), built into the user cache
# (memvirt capture would build it on first use too; without gcc or valgrind it says what is
# missing, and the capture tests are skipped).
tool: $(STAMP) sysdeps
	-@$(BIN)/python -c "from memvirt.trace.mvtool import tool_dir; print('mvtrace tool:', tool_dir())"

demo: $(STAMP) tool
	$(BIN)/memvirt demo --out demo-out

test: $(STAMP) sysdeps tool
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/memvirt bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache
