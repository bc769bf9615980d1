#!/bin/bash
# Runs the task's checks with Python's standard unittest (no network, nothing to install).
# TEST_DIR is where the verifier staged this script and tests/; the cwd is the work dir.
set -u
python3 -m unittest discover -s "${TEST_DIR:?}" -p 'test_*.py' -v 2>&1
