"""``terminus_reward`` (``TERMINAL_ENV.md`` §9.6): the reward of each completion, read from
the tool messages the environment produced, for TRL's ``reward_funcs``.

Modes, for one tool message (the last one with a reward wins):

- ``"json_then_summary"`` (default): a JSON object with a numeric (not bool) ``reward`` gives
  it; other JSON gives nothing; non-JSON text gives the last line
  ``Verification: P/T passed; reward=R``.
- ``"json"``: only a JSON object's numeric ``reward``.
- ``"legacy"`` (the peer's rule): a JSON object with a non-null ``reward`` gives
  ``float(reward)``; otherwise the first ``reward=<number>`` anywhere in the text (so
  ``reward=1e-05`` reads as 1.0, and an agent that prints ``reward=1`` earns 1.0).
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Mapping, Optional

__all__ = ["REWARD_MODES", "terminus_reward", "tool_message_reward"]

REWARD_MODES = ("json_then_summary", "json", "legacy")

_LEGACY_RE = re.compile(r"reward=([+-]?(?:\d+(?:\.\d*)?|\.\d+))")
_SUMMARY_RE = re.compile(
    r"^Verification: \d+/\d+ passed; reward=([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)$"
)
_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except Exception:  # noqa: BLE001 - anything that is not JSON
        return _NOT_JSON


def _numeric(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def tool_message_reward(content: Any, mode: str = "json_then_summary") -> Optional[float]:
    """The reward one tool message carries under ``mode``, or ``None``."""
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown terminus_reward mode {mode!r}; expected one of {REWARD_MODES}")
    text = str(content)
    parsed = _json(text)
    if mode == "legacy":
        if isinstance(parsed, dict) and parsed.get("reward") is not None:
            try:
                return float(parsed["reward"])
            except (TypeError, ValueError):
                return None
        match = _LEGACY_RE.search(text)
        return float(match.group(1)) if match else None
    if parsed is not _NOT_JSON:
        return _numeric(parsed.get("reward")) if isinstance(parsed, dict) else None
    if mode == "json":
        return None
    found = None
    for line in text.splitlines():
        match = _SUMMARY_RE.match(line)
        if match:
            found = float(match.group(1))
    return found


def terminus_reward(
    completions: Optional[List[Any]] = None, *, mode: str = "json_then_summary", **kwargs: Any
) -> List[float]:
    """One reward per completion: 0.0, overwritten by every tool message (``role ==
    "tool"``) that carries a reward under ``mode``; a completion that is not a message list
    scores 0.0. Extra keyword arguments (TRL passes ``prompts``, ``environments``, …) are
    ignored."""
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown terminus_reward mode {mode!r}; expected one of {REWARD_MODES}")
    rewards: List[float] = []
    for completion in completions or []:
        reward = 0.0
        if isinstance(completion, list):
            for message in completion:
                if isinstance(message, Mapping) and message.get("role") == "tool":
                    found = tool_message_reward(message.get("content"), mode)
                    if found is not None:
                        reward = found
        rewards.append(reward)
    return rewards
