#!/usr/bin/env bash
# Install a real Apache Airflow 3 for keel's Airflow deploy tests, idempotently, in ITS OWN venv at
# .cache/airflow/venv (git-ignored): Airflow's pins (SQLAlchemy, FastAPI, pydantic, ...) clash with keel's,
# so it never shares keel's environment. keel never imports Airflow; the generated DAG files do, and the
# tests (tests/harness/airflow.py) run them with this venv's `airflow` CLI and python.
# The cncf-kubernetes provider brings the KubernetesPodOperator the production DAGs use.
# No constraints file: the official one lives on GitHub; pip resolves these pins cleanly on its own.
set -euo pipefail

AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
PY="${AIRFLOW_PYTHON:-python3}"   # the interpreter the Airflow venv is made from (not keel's venv)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/airflow/venv"
STAMP="$VENV/.keel-installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$AIRFLOW_VERSION" ]] && [[ -x "$VENV/bin/airflow" ]]; then
  echo "install-airflow: Airflow $AIRFLOW_VERSION already in $VENV"
  exit 0
fi
rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "apache-airflow==$AIRFLOW_VERSION" apache-airflow-providers-cncf-kubernetes
"$VENV/bin/python" -c "import airflow, airflow.providers.cncf.kubernetes, airflow.providers.standard" >/dev/null
echo "$AIRFLOW_VERSION" >"$STAMP"
echo "install-airflow: Airflow $AIRFLOW_VERSION in $VENV"
