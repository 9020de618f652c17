# `make run` and `make test` each build .venv from nothing when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test soak bench lint clean systemd-analyze chromium nats-server

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

# Test and lint tools are dependency groups in pyproject.toml, not extras (`pip install --group`
# needs pip >= 25.1: the venv's pip is upgraded above). The lint group (ruff, mypy) is installed
# with the test group: mypy checks the tests against pytest's, hypothesis' ... types anyway, and
# `make lint` then needs nothing from the network.
$(VENV)/.installed-test: $(BIN)/python pyproject.toml tests/plugin/pyproject.toml tests/plugin/magnus_testplugin.py
	$(BIN)/python -m pip install -q -e '.[all]' --group test --group lint ./tests/plugin
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/magnusd serve

test: $(VENV)/.installed-test systemd-analyze chromium nats-server
	$(BIN)/python -m pytest -q

# The long form of tests/reliability (make test runs them CI-sized): 100 kill -9 cycles,
# 5,000 fuzz examples. About 10 minutes here.
soak: $(VENV)/.installed-test
	MAGNUS_CRASH_CYCLES=100 MAGNUS_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest -q -s \
		tests/reliability

# The viewer's browser tests drive Debian's Chromium through its chromedriver (never a
# downloaded browser); install both when we can.
chromium:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || echo "chromium/chromedriver are not available: the browser tests will be skipped"

# The fan-in tests run a real nats-server (Debian package) on 127.0.0.1.
nats-server:
	@command -v nats-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; } || echo "nats-server is not available: the fan-in tests will be skipped"

# The unit-file checks need systemd-analyze (Debian package: systemd); install it when we can.
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; } || echo "systemd-analyze is not available: the unit-file checks will be skipped"

# Every Python file (ruff); mypy --strict over the packages, the tests and the benchmarks
# (pyproject.toml's [tool.mypy] skips analyzing torch, mlflow, wandb and tensorboard).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy sdk/magnus daemon/magnusd tests benchmarks

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/track_this.py
	$(BIN)/python benchmarks/track_gc.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/swap.py
	$(BIN)/python benchmarks/trackers.py
	$(BIN)/python benchmarks/track_values.py
	$(BIN)/python benchmarks/rss.py
	$(BIN)/python benchmarks/recovery.py
	$(BIN)/python benchmarks/viewer.py

clean:
	rm -rf $(VENV) build dist
