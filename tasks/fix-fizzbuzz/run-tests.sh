#!/bin/bash
# Runs the task's checks with Python's standard unittest (no network, nothing to install).
# TEST_DIR is where the verifier staged this script and tests/; the cwd is the work dir.
# `-I` (isolated): the agent's work dir is not on sys.path, so a planted `unittest/` package
# or `sitecustomize.py` there cannot fake a pass; PYTHON* variables are ignored.
# The server scores the one unittest summary this prints, and only from a run that ended
# normally; the reward file is never read for a task folder (docs/verification.md).
exec python3 -I -m unittest discover -s "${TEST_DIR:?}" -p 'test_*.py' -v 2>&1
