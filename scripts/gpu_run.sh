#!/usr/bin/env bash
# One GPU run: the CUDA tests, inference and training figures, a training run of the default recipe on the
# carried real drives, pack, export and score, every stage time-boxed, every figure in DIR/summary.json.
#
#   scripts/gpu_run.sh --out DIR [--device cuda|cpu] [--smoke] [--minutes N] [--cache runs/gpu_cache] [--skip STAGE…]
#
# Needs the gpu cache (`make gpu-cache`, runs/gpu_cache). On a machine whose Python lacks rosbags (a bare CUDA
# image), the wheels in .whl/ (`make gpu-wheels`) are installed into a temporary folder first.
# Details: dualdepth_ros/bench/gpu_run.py; README.md, "GPU run".
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import rosbags.highlevel' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/dualdepth-gpu-run-site"
    echo "rosbags is not importable by $PY: installing .whl/*.whl into $site"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: $PY cannot import rosbags and .whl/ holds no wheels: run 'make gpu-wheels' and bring .whl along" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m dualdepth_ros.bench.gpu_run "$@"
