#!/usr/bin/env bash
# Installs the system packages the project needs on Debian 12 when they are missing.
# Usage: setup-system.sh serve|test. Needs root (or sudo) only when something is missing.
set -euo pipefail
purpose=${1:-test}

need=()
# Python virtual environments (tests): the interpreter's venv module with ensurepip.
if [ "$purpose" = test ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need+=(python3-venv)
fi
if [ "$purpose" = test ] && ! command -v git >/dev/null 2>&1; then
    need+=(git)
fi
# The local sandbox: bubblewrap, and the system Python the example tasks' checks use inside it.
if ! command -v bwrap >/dev/null 2>&1; then
    need+=(bubblewrap)
fi
if [ ! -x /usr/bin/python3 ]; then
    need+=(python3)
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "setup: installing system packages: ${need[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
        echo "setup: need root to install ${need[*]} (run as root, or install them first)" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
