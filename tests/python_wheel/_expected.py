"""Expected values shared by the wheel's tests and the TRL training tests."""

#: The schema `transformers.utils.get_json_schema` (TRL's way) makes of `TerminalEnv.terminal`.
TERMINAL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "terminal",
        "description": "Run a shell command in the task's sandbox and return its output.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": (
                        "The shell command to run with bash, e.g. `ls -la` or `python3 main.py`."
                    ),
                }
            },
            "required": ["command"],
        },
        "return": {
            "type": "string",
            "description": (
                "The command's output: stdout, then stderr, then `ERROR:` and the exit code "
                "if it failed."
            ),
        },
    },
}
