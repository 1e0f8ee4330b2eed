# `make demo` and `make test` work on a fresh machine: each creates .venv once (plain pip), then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean browser label-studio

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision pinned to the wheels this machine keeps on disk (no multi-GB download).
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/apis demo

# The browser test (tests/annotate/test_browser.py) drives Debian's chromium; installed here when missing and
# root (as on CI). Never a browser download: Playwright gets the system binary as its executable.
browser:
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: /usr/bin/chromium is missing and this is not root: the browser test will be skipped"; fi; }

# The tests against a real Label Studio server (tests/interop/test_label_studio_api.py) need Label Studio, pinned,
# in a venv of its own: its dependencies (Django and many more) are not the project's. Installed once; when the
# install fails (no package index), those tests are skipped, unless APIS_REQUIRE_LABEL_STUDIO=1 (CI).
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)

$(LS_STAMP):
	@{ test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV); } && \
	$(LS_VENV)/bin/pip install --quiet label-studio==$(LABEL_STUDIO_VERSION) && touch $(LS_STAMP) || \
	{ rm -rf $(LS_VENV); echo "note: label-studio==$(LABEL_STUDIO_VERSION) could not be installed: the Label \
	Studio tests will be skipped"; }

label-studio: $(LS_STAMP)

# A first start of Label Studio migrates a new database (about a minute): done once here, after installing it,
# and copied by the tests at every start (tests/interop/label_studio_server.py). When it fails, the tests migrate
# their own.
LS_DATABASE := $(LS_VENV)/.migrated-$(LABEL_STUDIO_VERSION).sqlite3

$(LS_DATABASE): $(LS_STAMP) $(STAMP)
	-$(BIN)/python tests/interop/label_studio_server.py $@

# One test process per core and one more: every test runs on one thread (tests/conftest.py), and many wait on
# processes they start (servers, a browser, torchrun ranks), so a third process keeps 2 cores busier (on the
# 2-core Xeon, 7.6 min against 8.5 min with two, back to back: `git show 9ce65ba:results/test_time.json`). The
# tests of one file stay in one process (their module fixtures are built once).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))

test: $(STAMP) browser label-studio $(LS_DATABASE)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(LS_VENV) runs/demo
