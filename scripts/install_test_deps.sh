#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust on a fresh Debian machine: headless Chromium
# and its WebDriver for the browser tests, pytrec_eval (trec_eval's code, the reference the
# evaluation tests compare against), torch + transformers + sentence-transformers (the
# fine-tuning tests load clinsearch's output folders with them), and the openai and
# huggingface_hub clients (the embedding endpoints are tested with them), and schemathesis (the
# OpenAPI description is tested with it), and maturin, pytest and Ray (the Python package is
# built and tested on a local Ray cluster), and iproute2 (that cluster runs in a network
# namespace with only loopback). Idempotent: does nothing when all are present.
set -euo pipefail
if ! python3 -c "import pytrec_eval" 2> /dev/null; then
  echo "install_test_deps: installing pytrec_eval-terrier (trec_eval for the evaluation tests)" >&2
  python3 -m pip install --quiet pytrec_eval-terrier
fi
if ! python3 -c "import torch, transformers, sentence_transformers" 2> /dev/null; then
  echo "install_test_deps: installing torch, transformers and sentence-transformers (fine-tuning tests)" >&2
  python3 -m pip install --quiet torch transformers sentence-transformers
fi
if ! python3 -c "import openai, huggingface_hub" 2> /dev/null; then
  echo "install_test_deps: installing openai and huggingface_hub (the embedding endpoints' real clients)" >&2
  python3 -m pip install --quiet openai huggingface_hub
fi
if ! python3 -c "import schemathesis" 2> /dev/null; then
  echo "install_test_deps: installing schemathesis (the OpenAPI description's tester)" >&2
  python3 -m pip install --quiet schemathesis
fi
if ! python3 -c "import seqeval" 2> /dev/null; then
  echo "install_test_deps: installing seqeval (the NER metrics' reference)" >&2
  python3 -m pip install --quiet seqeval
fi
if ! python3 -c "import ray.data, ray.serve, pytest" 2> /dev/null || ! command -v maturin > /dev/null; then
  echo "install_test_deps: installing maturin, pytest and ray[data,serve] (the Python package and its Ray cluster tests)" >&2
  python3 -m pip install --quiet maturin pytest "ray[data,serve]"
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! command -v ip > /dev/null && command -v apt-get > /dev/null; then
  echo "install_test_deps: installing iproute2 (the Ray tests run in a loopback-only network namespace)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iproute2 > /dev/null
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install_test_deps: no apt-get here; install Chromium and ChromeDriver (set CHROMIUM and CHROMEDRIVER to their paths)" >&2
  exit 1
fi
echo "install_test_deps: installing chromium and chromium-driver for the browser tests" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver > /dev/null
