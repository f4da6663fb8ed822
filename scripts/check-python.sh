#!/usr/bin/env bash
# Stops `make` with one line when the interpreter cannot build the project's venv: missing, older than
# setup.py's python_requires, or without the venv module's ensurepip (Debian/Ubuntu ship it as python3-venv).
set -uo pipefail
python=${1:-python3}
need=$(sed -n 's/.*python_requires=">=\([0-9]*\.[0-9]*\)".*/\1/p' "$(dirname "$0")/../setup.py")
fail() { echo "make: $*" >&2; exit 1; }
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || fail "'$python' does not run; install Python >= $need or pass PYTHON=/path/to/python3.x"
[[ $have =~ ^[0-9]+\.[0-9]+$ ]] || fail "'$python' reports no usable version ('$have'); pass PYTHON=/path/to/python3.x"
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  fail "'$python' is Python $have; the service needs >= $need (pass PYTHON=/path/to/python$need or newer)"
fi
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || fail "'$python -m venv' is unavailable; on Debian/Ubuntu: apt-get install python3-venv (or python$have-venv)"
