#!/usr/bin/env bash
# Install everything the tests need (DCMTK from Debian, the project with its
# test extras from PyPI, pynetdicom among them) and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -x /usr/bin/storescp ] || [ ! -x /usr/bin/echoscu ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk >/dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m ruff check src tests benchmarks
python3 -m pytest "$@"
