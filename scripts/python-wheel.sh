#!/usr/bin/env bash
# Builds the `openenv-rs` wheel (python/, maturin, one abi3 wheel for Python >= 3.9) and
# installs it into the project's test virtual environment `.venv`, with the pinned tools its
# tests use (tests/python_wheel/):
#
#   maturin       builds the wheel
#   mypy          `mypy.stubtest` checks python/openenv_rs/_native.pyi against the module
#   transformers  `transformers.utils.get_json_schema`, the function TRL 1.16 turns the TRL
#                 adapter's tool methods into tool schemas with (TRL itself needs torch, which
#                 is a multi-GB download here, so it is not installed)
#
# The tools are installed under a constraints file made from `.venv`'s own `pip freeze`, so
# they never change a package the official-client tests (tests/python/) rely on.
#
# Idempotent and fast when nothing changed: the tools are stamped by their pin list, the
# wheel by a hash of every input (python/, env-client/, Cargo.toml, Cargo.lock); a matching
# stamp skips the step. `--force` rebuilds and reinstalls anyway.
#
# Usage: scripts/python-wheel.sh [--force] [--debug]
#   --debug   build with the dev profile (faster to build, slower to run; default: --release,
#             which bench/python_binding_bench.py needs: it refuses a debug build)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
py="$venv/bin/python"
out="$repo/target/wheels"

MATURIN_PIN="maturin==1.16.0"
TOOL_PINS=("$MATURIN_PIN" "mypy==2.4.1" "transformers==5.24.0")

force=0
profile=(--release)
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --debug) profile=() ;;
        *) printf 'python-wheel: unknown argument %s\n' "$arg" >&2; exit 2 ;;
    esac
done

log() { printf 'python-wheel: %s\n' "$*"; }
die() { printf 'python-wheel: error: %s\n' "$*" >&2; exit 1; }

# 1. The project's test venv (scripts/python-venvs.sh makes it; it skips a complete one).
if [ ! -x "$py" ]; then
    log ".venv is missing: creating it with scripts/python-venvs.sh oe010"
    scripts/python-venvs.sh oe010
fi

# 2. The pinned tools, under a constraints file of what .venv already has.
tools_stamp="$venv/.openenv-rs-wheel-tools.sha256"
tools_hash="$(printf '%s\n' "${TOOL_PINS[@]}" "$("$py" -c 'import sys; print(sys.version)')" | sha256sum | cut -d' ' -f1)"
if [ "$force" = 1 ] || [ ! -f "$tools_stamp" ] || [ "$(cat "$tools_stamp")" != "$tools_hash" ]; then
    log "installing ${TOOL_PINS[*]} into .venv"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    "$py" -m pip freeze --disable-pip-version-check --exclude-editable \
        | grep -v -i -E '^(openenv-rs|maturin|mypy|transformers)==' >"$constraints" || true
    "$py" -m pip install --quiet --disable-pip-version-check --no-input \
        -c "$constraints" "${TOOL_PINS[@]}"
    "$py" -c 'import maturin, mypy.stubtest, transformers.utils' \
        || die "the tools do not import after installing them"
    printf '%s\n' "$tools_hash" >"$tools_stamp"
else
    log "tools: up to date (${TOOL_PINS[*]})"
fi

# 3. The wheel: rebuilt and reinstalled only when an input changed.
inputs_hash() {
    {
        printf 'profile=%s\n' "${profile[*]:-dev}"
        git ls-files -co --exclude-standard -- python env-client Cargo.toml Cargo.lock \
            | LC_ALL=C sort | while IFS= read -r f; do
                [ -f "$f" ] && printf '%s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"
            done
    } | sha256sum | cut -d' ' -f1
}
wheel_stamp="$venv/.openenv-rs-wheel.sha256"
want="$(inputs_hash)"
if [ "$force" = 0 ] && [ -f "$wheel_stamp" ] && [ "$(cat "$wheel_stamp")" = "$want" ] \
    && "$py" -c 'import openenv_rs' >/dev/null 2>&1; then
    log "wheel: up to date ($("$py" -c 'import openenv_rs; print(openenv_rs.__version__)'))"
    exit 0
fi

log "building the wheel: maturin build -m python/Cargo.toml ${profile[*]:-} -o target/wheels (target dir target/maturin)"
mkdir -p "$out"
rm -f "$out"/openenv_rs-*.whl
# Its own target dir: maturin configures pyo3 differently from a plain `cargo build`, so
# sharing target/ would rebuild pyo3 every time the two alternate.
"$venv/bin/maturin" build -m python/Cargo.toml "${profile[@]}" -o "$out" \
    --interpreter "$py" --locked --target-dir "$repo/target/maturin"
wheel="$(ls -t "$out"/openenv_rs-*.whl 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || die "maturin produced no wheel in $out"

log "installing $(basename "$wheel") into .venv"
"$py" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    --force-reinstall "$wheel"
"$py" -c 'import openenv_rs, openenv_rs.trl, openenv_rs.terminus' \
    || die "the installed wheel does not import"
printf '%s\n' "$want" >"$wheel_stamp"
log "ready: openenv-rs $("$py" -c 'import openenv_rs; print(openenv_rs.__version__)') in .venv"
