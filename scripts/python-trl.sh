#!/usr/bin/env bash
# Creates `.venv-trl`, the virtual environment of the TRL training test (tests/python_trl/) and
# of python/examples/trl_grpo_terminal.py: TRL's GRPOTrainer on CPU against env-server, with
# the `openenv-rs` wheel built from this repository.
#
#   torch 2.15.0, trl 1.16.0, transformers 5.24.0, datasets 5.2.0, accelerate 1.15.0,
#   pytest 9.2.0, pytest-timeout 2.4.0
#
# and every other package at the version in scripts/python-trl.constraints.txt (a verified
# `pip freeze`). PyPI's Linux torch wheel depends on the CUDA libraries (nvidia-* packages,
# ~3 GB of downloads; `import torch` fails without them even on a machine with no GPU), so the
# venv takes ~5.9 GB on disk and ~3 min to install (downloaded without a pip cache).
#
# Idempotent and fast when nothing changed: the packages are stamped by the pins, the
# constraints and the interpreter; the wheel is scripts/python-wheel.sh's (which rebuilds it
# only when an input changed), installed here when its hash changed. `--force` reinstalls
# both. The stamps are written last, so an interrupted run is redone.
#
# Usage: scripts/python-trl.sh [--force] [--debug]
#   --debug   passed to scripts/python-wheel.sh (a dev-profile wheel, as the test command uses)
# Env:   PYTHON (default python3.11, else python3)  the interpreter the venv is made from.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv-trl"
py="$venv/bin/python"
constraints="$repo/scripts/python-trl.constraints.txt"

PINS=(
    "torch==2.15.0" "trl==1.16.0" "transformers==5.24.0" "datasets==5.2.0"
    "accelerate==1.15.0" "pytest==9.2.0" "pytest-timeout==2.4.0"
)

force=0
wheel_args=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --debug) wheel_args+=(--debug) ;;
        *) printf 'python-trl: unknown argument %s\n' "$arg" >&2; exit 2 ;;
    esac
done

log() { printf 'python-trl: %s\n' "$*"; }
die() { printf 'python-trl: error: %s\n' "$*" >&2; exit 1; }

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi
command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (set PYTHON=...)"

# 1. The venv and its pinned packages.
pkg_stamp="$venv/.openenv-rs-trl-packages.sha256"
pkg_hash="$({
    printf '%s\n' "${PINS[@]}"
    cat "$constraints"
    "$python" -c 'import sys; print(sys.version)'
} | sha256sum | cut -d' ' -f1)"
if [ "$force" = 1 ] || [ ! -x "$py" ] || [ ! -f "$pkg_stamp" ] || [ "$(cat "$pkg_stamp")" != "$pkg_hash" ]; then
    if [ ! -x "$py" ]; then
        log "creating $venv with $python"
        "$python" -m venv "$venv"
    fi
    rm -f "$pkg_stamp" "$venv/.openenv-rs-trl-wheel.sha256"
    # The venv takes ~6 GB; say so up front rather than let pip fail half-way.
    free_kib="$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')"
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((7 * 1024 * 1024)) ]; then
        die "installing torch and TRL needs about 7 GB free under $venv; $((free_kib / 1024)) MiB are"
    fi
    log "installing ${PINS[*]} (with their dependencies: the CUDA libraries torch needs, ~3 GB)"
    start=$SECONDS
    # No pip cache: it would keep a second copy of the ~3 GB of wheels.
    "$py" -m pip install --quiet --disable-pip-version-check --no-input --no-cache-dir \
        -c "$constraints" "${PINS[@]}"
    "$py" -c 'import torch, trl, transformers, datasets, accelerate, pytest' \
        || die "the packages do not import after installing them"
    log "packages installed in $((SECONDS - start)) s; venv size $(du -sh "$venv" | cut -f1)"
    printf '%s\n' "$pkg_hash" >"$pkg_stamp"
else
    log "packages: up to date (${PINS[*]})"
fi

# 2. The openenv-rs wheel: the one scripts/python-wheel.sh builds (and stamps) for `.venv`,
#    the same abi3 file, installed here too when it changed.
scripts/python-wheel.sh "${wheel_args[@]}"
wheel="$(ls -t "$repo"/target/wheels/openenv_rs-*.whl 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || die "scripts/python-wheel.sh left no wheel in target/wheels"
wheel_stamp="$venv/.openenv-rs-trl-wheel.sha256"
want="$(sha256sum <"$wheel" | cut -d' ' -f1)"
if [ "$force" = 0 ] && [ -f "$wheel_stamp" ] && [ "$(cat "$wheel_stamp")" = "$want" ] \
    && "$py" -c 'import openenv_rs.trl' >/dev/null 2>&1; then
    log "wheel: up to date"
    exit 0
fi
"$py" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    --force-reinstall "$wheel"
"$py" -c 'import openenv_rs.trl' || die "the installed wheel does not import"
printf '%s\n' "$want" >"$wheel_stamp"
log "ready: $venv (openenv-rs $("$py" -c 'import openenv_rs; print(openenv_rs.__version__)'), $(basename "$wheel"))"
