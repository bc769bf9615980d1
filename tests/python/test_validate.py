"""`openenv validate --url` (PROTOCOL.md §1, §9 item 19) and the 0.10 runtime wire checks.

Both generations ship the CLI with the same `--url` probe (health, openapi, metadata, schema,
`POST /mcp {}`, mode consistency). The 0.10 package also has `openenv.validation`, whose runtime
level replays an episode on `/ws` without compression and grades the raw envelopes; its CLI
runs that only for a package it builds into a Docker image, so the test drives the same collector
and graders directly against the running server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from _support import IS_010, IS_030


def test_openenv_validate_url_passes(server) -> None:
    cli = Path(sys.executable).parent / "openenv"
    assert cli.is_file(), f"the openenv console script is missing from {cli.parent}"
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run(
        [str(cli), "validate", "--url", server.url, "--json", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=25,
        env=env,
    )
    assert proc.returncode == 0, f"openenv validate failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["passed"] is True, report
    assert report["standard_profile"] == "openenv-http/1.x", report
    assert report["mode"] == "simulation", report
    ids = {c["id"] for c in report["criteria"] if c["passed"]}
    assert ids == {
        "openapi_version_available",
        "health_endpoint",
        "metadata_endpoint",
        "schema_endpoint",
        "mcp_endpoint",
        "mode_endpoint_consistency",
    }, report


def test_runtime_wire_checks(server) -> None:
    if IS_030:
        # openenv-core 0.3.0 has no runtime validation package: only the --url probe above.
        assert importlib.util.find_spec("openenv.validation") is None
        return
    assert IS_010
    from openenv.validation.graders.runtime.basic import (
        ObservationSchemaGrader,
        RewardWellFormedGrader,
        StateContractGrader,
    )
    from openenv.validation.runtime.collector import collect_runtime_evidence
    from openenv.validation.runtime.contracts import RuntimePlan, RuntimeReset

    plan = RuntimePlan(
        plan_schema_version="1",
        reset=RuntimeReset(episode_id="validate-ep", seed=7, options={"difficulty": "easy"}),
        actions=[{"message": "hello"}, {"message": "héllo ✓"}, {"message": "bye"}, {"message": "after-done"}],
    )
    evidence = collect_runtime_evidence(server.url, plan, episode_timeout_s=15.0, request_timeout_s=5.0)
    assert evidence.failure_reason is None, (evidence.failure_phase, evidence.failure_reason)
    # reset, state, then step+state until done ("bye"); the fourth action is never sent.
    assert [x.operation for x in evidence.exchanges] == [
        "reset", "state", "step", "state", "step", "state", "step", "state",
    ]
    subject = SimpleNamespace(
        runtime_evidence=evidence,
        manifest=SimpleNamespace(reward=SimpleNamespace(range=(0.0, 10.0))),
    )
    for grader in (ObservationSchemaGrader(), StateContractGrader(), RewardWellFormedGrader()):
        result = grader.run(subject)
        assert result.status.value == "pass", (grader.check_id, result.evidence)
