# The two commands of the README: `make demo` and `make test`. Each sets up what it needs, idempotently.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast setup setup-test engines clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,kafka,redis]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/keel demo

# Real engines for the tests: Kafka broker jars (Maven Central), redis-server (Debian), moto (PyPI),
# Spark + Delta jars, Airflow 3 (its own venv in .cache/airflow).
engines: setup
	PYTHON="$(BIN)/python" bash scripts/install-redis.sh
	PYTHON="$(BIN)/python" bash scripts/install-kafka.sh
	PYTHON="$(BIN)/python" bash scripts/install-s3.sh
	PYTHON="$(BIN)/python" bash scripts/install-spark.sh
	AIRFLOW_PYTHON="$(PYTHON)" bash scripts/install-airflow.sh

test: engines
	$(BIN)/python -m pytest -p no:cacheprovider tests

test-fast: setup
	$(BIN)/python -m pytest -p no:cacheprovider -m "not slow and not kafka" tests/unit tests/contract

clean:
	rm -rf $(VENV) .cache
