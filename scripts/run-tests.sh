#!/usr/bin/env bash
# Install everything the tests need (DCMTK and PostgreSQL from Debian, the project with its
# test extras from PyPI, pynetdicom among them) and run lint, type check, import
# contracts and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# DCMTK: the interop peer; Chromium and its driver: the browse page and OHIF viewer tests;
# Node.js and npm: fetch the OHIF viewer (npm pack @ohif/app); jq: audit lines;
# PostgreSQL: the tests start a server of their own for the --index tests (issue 17).
APT_PACKAGES="dcmtk chromium chromium-driver jq postgresql"
# Node.js and npm only when the machine has no npm: a NodeSource Node.js bundles
# its own npm, and Debian's npm package conflicts with it.
command -v npm >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES nodejs npm"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
python3 -m pip install -q -e '.[test]'
# Byte-compile the package once: an editable install is not compiled, and where
# PYTHONDONTWRITEBYTECODE is set every server and CLI the tests start would compile
# every module from source again (about 0.1 s of CPU each).
python3 -m compileall -q src/dicomstore
python3 -m ruff check src tests benchmarks
# Types ([tool.mypy]: strict on ul, dimse and archive) and the import contracts
# ([tool.importlinter]: the layers and what the core and the archive never import).
python3 -m mypy src/dicomstore
# (lint-imports, run through python3 like the rest: pip may put scripts off PATH)
python3 -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --no-logo
python3 -m pytest "$@"
