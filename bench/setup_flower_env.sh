#!/usr/bin/env bash
# Flower's simulation engine (flwr + Ray) in the benchmark's own virtual environment,
# next to this script, so it never touches the project's environment.
#
#     bash bench/setup_flower_env.sh        # creates bench/flower-venv
# (bench/check_against_flower.py needs only flwr, numpy<2, pydantic and dp-accounting: no TensorFlow.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/flower-venv"
python="${PYTHON:-python3.11}"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# TensorFlow 2.15 (Keras 2) as in the project; flwr's simulation extra brings Ray; psutil measures memory;
# pydantic for fedless_nb's wire contract, which the Flower client's training step (function/handler.py) imports;
# dp-accounting for central DP's accountant, which check_against_flower.py runs.
"$venv/bin/pip" install --quiet "flwr[simulation]>=1.8,<2" "tensorflow-cpu==2.15.1" "scikit-learn>=1.3" "psutil>=5.9" \
    "pydantic>=2.6,<3" "dp-accounting>=0.4.3"
"$venv/bin/pip" check
"$venv/bin/python" -c "import flwr, ray, tensorflow; print('flwr', flwr.__version__, 'ray', ray.__version__, 'tensorflow', tensorflow.__version__)"
