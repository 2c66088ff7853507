# Two entry points from a fresh clone: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean sysdeps tool workloads-deps docs-numbers

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

# Rewrite the generated numbers in README.md and docs/*.md from the code (src/memvirt/
# docsnumbers.py; tests/test_docs_numbers.py fails when one is stale).
docs-numbers: $(STAMP)
	$(BIN)/python -m memvirt.docsnumbers --write

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# What the real-program suite (memvirt workloads, docs/workloads-real.md) runs: Debian
# packages (installed when run as root, as sysdeps does; otherwise the apt-get command is
# printed), the PyPI group `workloads` in .venv, and the C code base of the compile workload
# (brotli's sdist, which vendors the C library; keep the version in step with
# BROTLI_VERSION in src/memvirt/workloads/inputs.py).  Idempotent: a stamp file records a
# complete install.  `make test` does not need it (tests skip what is missing).
WL_DEBS := bash coreutils grep sed gawk dash diffutils make gcc binutils sqlite3 zstd python3
WL_BROTLI := 1.2.0
WL_SRC := $(VENV)/workloads-src
WL_STAMP := $(VENV)/.workloads-deps

workloads-deps: $(WL_STAMP)

$(WL_STAMP): $(STAMP) pyproject.toml
	@missing=""; for p in $(WL_DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: the workloads need Debian packages; run as root: apt-get install$$missing"; fi; \
	fi
	$(BIN)/pip install -q -e '.[test,workloads]'
	@mkdir -p $(WL_SRC)
	@test -f $(WL_SRC)/brotli-$(WL_BROTLI).tar.gz || \
	  $(BIN)/pip download -q --no-binary :all: --no-deps -d $(WL_SRC) brotli==$(WL_BROTLI)
	@missing=""; for p in $(WL_DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ] && [ -f $(WL_SRC)/brotli-$(WL_BROTLI).tar.gz ]; then touch $@; \
	else echo "note: workloads-deps incomplete (missing:$$missing); run it again as root"; fi
