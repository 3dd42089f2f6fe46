#!/usr/bin/env bash
# Install what keel's S3 lake tests need: moto_server, the S3 API server the test harness
# (tests/harness/s3.py) starts on 127.0.0.1. It comes from PyPI with moto[server] (also in the
# `test` extra). keel's lake itself needs nothing extra for S3: deltalake brings its own object
# store client. Idempotent: installs only what is missing, so .ci/run can call it every time.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
BIN_DIR="$("$PYTHON" -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent)')"

if [ ! -x "$BIN_DIR/moto_server" ] || ! "$PYTHON" -c "import moto.server, flask, flask_cors" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "moto[server]>=5.0"
fi

"$PYTHON" -c "import moto, deltalake; print('moto', moto.__version__, '+ deltalake', deltalake.__version__)"
echo "moto_server: $BIN_DIR/moto_server"
