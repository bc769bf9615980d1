#!/bin/bash
# Runs the task's checks with Python's standard unittest (no network, nothing to install).
# TEST_DIR is where the verifier staged this script and tests/; the cwd is the work dir.
# `-I` (isolated): the agent's work dir is not on sys.path, so a planted `unittest/` package
# or `sitecustomize.py` there cannot fake a pass; PYTHON* variables are ignored.
# The reward comes from the test summary only: the checks run agent-written code, so any
# reward file that code may have written is removed afterwards.
set -u
python3 -I -m unittest discover -s "${TEST_DIR:?}" -p 'test_*.py' -v 2>&1
rc=$?
rm -f "${REWARD_FILE:-/nonexistent}"
exit $rc
