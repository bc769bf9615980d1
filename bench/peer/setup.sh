#!/usr/bin/env bash
# Creates the benchmark peer's Python virtual environment at <repo>/.venv-bench: the official
# `openenv` 0.10.0 server and client plus uvicorn (bench/peer/requirements.txt, from PyPI).
#
# Idempotent: a venv whose stamp file matches the hash of the requirement list and of the
# interpreter is left alone; anything else is rebuilt from scratch. The stamp is written last,
# so an interrupted install is redone on the next run. env-bench calls this before it starts
# the peer; it prints progress on stderr and, on success, the venv's python path on stdout.
#
# Usage: bench/peer/setup.sh            Env: PYTHON (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv-bench"
reqs="$here/requirements.txt"
python="${PYTHON:-python3}"
stamp="$venv/.env-bench-requirements.sha256"

log() { printf 'bench/peer/setup.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (set PYTHON=...)"
[ -f "$reqs" ] || die "missing $reqs"

wanted="$({
    cat "$reqs"
    "$python" -c 'import sys; print(sys.version); print(sys.executable)'
} | sha256sum | cut -d' ' -f1)"

# Cheap (no heavy imports): both distributions are installed at the pinned versions.
check='import importlib.metadata as m; assert m.version("openenv") == "0.10.0"; m.version("uvicorn")'

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
    && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "$venv/bin/python"
    exit 0
fi

log "creating ${venv#"$repo"/} (first run, or the requirements changed); this takes a minute"
rm -rf "$venv"
if ! "$python" -m venv "$venv" >&2; then
    rm -rf "$venv"
    die "'$python -m venv' failed (Debian: apt-get install -y python3-venv)"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 \
    || log "warning: could not upgrade pip; going on with the bundled one"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" >&2 \
    || die "pip install -r $reqs failed"
"$venv/bin/python" -c 'import openenv.core, uvicorn' >&2 || die "the installed peer does not import"
printf '%s\n' "$wanted" >"$stamp"
log "ready"
echo "$venv/bin/python"
