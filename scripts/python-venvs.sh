#!/usr/bin/env bash
# Creates the project's Python test virtual environments at the repository root:
#
#   .venv          official `openenv` 0.10.0 client   (tests/python/requirements-oe010.txt)
#   .venv-core030  official `openenv-core` 0.3.0 client (tests/python/requirements-core030.txt)
#
# Idempotent: a venv whose stamp file matches the hash of its requirement list (and of the
# interpreter) is left alone; any other state is rebuilt from scratch. The stamp is written
# last, so an interrupted install is redone on the next run.
#
# Usage: scripts/python-venvs.sh [oe010|core030]...   (default: both)
# Env:   PYTHON (default python3)  the interpreter the venvs are made from.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
stamp_name=".openenv-rs-requirements.sha256"

log() { printf 'python-venvs: %s\n' "$*"; }
die() { printf 'python-venvs: error: %s\n' "$*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (set PYTHON=...)"

# One venv per name: <dir> <requirements file>.
venv_dir() {
    case "$1" in
        oe010) echo "$repo/.venv" ;;
        core030) echo "$repo/.venv-core030" ;;
        *) die "unknown venv '$1' (expected oe010 or core030)" ;;
    esac
}
venv_reqs() { echo "$repo/tests/python/requirements-$1.txt"; }

# The stamp covers the requirement list and the interpreter that built the venv.
wanted_hash() {
    local reqs="$1"
    {
        cat "$reqs"
        "$python" -c 'import sys; print(sys.version); print(sys.executable)'
        readlink -f "$(command -v "$python")"
    } | sha256sum | cut -d' ' -f1
}

make_venv() {
    local dir="$1"
    if "$python" -m venv "$dir" >/tmp/python-venvs.$$.err 2>&1; then
        rm -f /tmp/python-venvs.$$.err
        return 0
    fi
    if grep -qiE 'ensurepip|python3(\.[0-9]+)?-venv' /tmp/python-venvs.$$.err; then
        rm -f /tmp/python-venvs.$$.err
        rm -rf "$dir"
        [ "$(id -u)" = 0 ] || die "'$python -m venv' needs python3-venv: run 'apt-get install -y python3-venv' as root"
        command -v apt-get >/dev/null 2>&1 || die "'$python -m venv' lacks ensurepip and there is no apt-get"
        log "ensurepip missing: apt-get install -y python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        "$python" -m venv "$dir"
        return 0
    fi
    cat /tmp/python-venvs.$$.err >&2
    rm -f /tmp/python-venvs.$$.err
    die "'$python -m venv $dir' failed"
}

ensure_venv() {
    local name="$1" dir reqs hash
    dir="$(venv_dir "$name")"
    reqs="$(venv_reqs "$name")"
    [ -f "$reqs" ] || die "missing requirement list $reqs"
    hash="$(wanted_hash "$reqs")"

    if [ -x "$dir/bin/python" ] && [ -f "$dir/$stamp_name" ] \
        && [ "$(cat "$dir/$stamp_name")" = "$hash" ] \
        && "$dir/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "$name: ${dir#"$repo"/} is complete (stamp matches $(basename "$reqs")), skipping"
        return 0
    fi

    if [ -e "$dir" ]; then
        log "$name: ${dir#"$repo"/} is missing, stale or incomplete: rebuilding it"
        rm -rf "$dir"
    fi
    log "$name: creating ${dir#"$repo"/} with $("$python" --version 2>&1)"
    make_venv "$dir"
    log "$name: pip install -r ${reqs#"$repo"/}"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$reqs"
    "$dir/bin/python" -c 'import openenv.core, pytest, pytest_timeout, websockets, httpx' \
        || die "$name: the installed venv cannot import the test dependencies"
    printf '%s\n' "$hash" >"$dir/$stamp_name"
    log "$name: ready: $("$dir/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
        | awk '$1 ~ /^openenv(-core)?$/ {print $1 "==" $2}')"
}

names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(oe010 core030)
for name in "${names[@]}"; do
    ensure_venv "$name"
done
