# Hand-written stubs of the native module `openenv_rs._native` (python/src/).
# Checked against the built module by `python -m mypy.stubtest openenv_rs._native`
# (tests/python_wheel/test_stubs.py).

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional, Union

from typing_extensions import Self, disjoint_base, final

__version__: str
__build__: str

__all__ = [
    "EnvClient",
    "AsyncEnvClient",
    "Pool",
    "StepResult",
    "VerifyResult",
    "Tool",
    "ToolCallResult",
    "OpenEnvError",
    "ServerError",
    "InvalidJsonError",
    "UnknownTypeError",
    "ValidationError",
    "ExecutionError",
    "CapacityReachedError",
    "FactoryError",
    "SessionError",
    "InvalidUrlError",
    "InvalidConfigError",
    "ConnectError",
    "ConnectionClosedError",
    "RequestTimeoutError",
    "ToolError",
    "EpisodeDoneError",
    "RpcError",
    "UnsupportedError",
    "ProtocolError",
    "TransportError",
    "ForkError",
    "__version__",
    "__build__",
]

_JsonValue = Any
_Reward = Union[float, int, bool, None]

# -- exceptions ----------------------------------------------------------------------------

class OpenEnvError(Exception): ...

class ServerError(OpenEnvError):
    code: str
    message: str
    data: Optional[dict[str, _JsonValue]]

class InvalidJsonError(ServerError): ...
class UnknownTypeError(ServerError): ...

class ValidationError(ServerError):
    errors: Optional[list[dict[str, _JsonValue]]]

class ExecutionError(ServerError): ...
class CapacityReachedError(ServerError): ...
class FactoryError(ServerError): ...
class SessionError(ServerError): ...

class InvalidUrlError(OpenEnvError, ValueError):
    url: str
    reason: str

class InvalidConfigError(OpenEnvError, ValueError):
    reason: str

class ConnectError(OpenEnvError, ConnectionError):
    url: str

class ConnectionClosedError(OpenEnvError, ConnectionError):
    close_code: Optional[int]
    reason: str

class RequestTimeoutError(OpenEnvError, TimeoutError):
    op: str
    after: float

class ToolError(OpenEnvError):
    error_type: str
    message: str

class EpisodeDoneError(ToolError):
    reward: Optional[float]

class RpcError(OpenEnvError):
    code: int
    message: str

class UnsupportedError(OpenEnvError):
    feature: str

class ProtocolError(OpenEnvError):
    message: str

class TransportError(OpenEnvError, ConnectionError): ...
class ForkError(OpenEnvError): ...

# -- results -------------------------------------------------------------------------------

@final
class StepResult:
    @property
    def observation(self) -> dict[str, _JsonValue]: ...
    @property
    def reward(self) -> _Reward: ...
    @property
    def done(self) -> bool: ...
    @property
    def metadata(self) -> Optional[dict[str, _JsonValue]]: ...

@final
class VerifyResult:
    @property
    def reward(self) -> float: ...
    @property
    def done(self) -> bool: ...
    @property
    def details(self) -> dict[str, _JsonValue]: ...

@final
class Tool:
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def input_schema(self) -> _JsonValue: ...

@final
class ToolCallResult:
    @property
    def value(self) -> _JsonValue: ...
    @property
    def observation(self) -> dict[str, _JsonValue]: ...
    @property
    def reward(self) -> _Reward: ...
    @property
    def done(self) -> bool: ...

# -- clients -------------------------------------------------------------------------------

@final
class EnvClient:
    def __new__(
        cls,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        request_timeout: Optional[float] = 60.0,
        keepalive_interval: Optional[float] = 5.0,
        max_message_bytes: int = 104857600,
    ) -> Self: ...
    @property
    def url(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def connect(self) -> Self: ...
    def reset(self, **kwargs: _JsonValue) -> StepResult: ...
    def step(self, action: Mapping[str, _JsonValue]) -> StepResult: ...
    def state(self) -> dict[str, _JsonValue]: ...
    def verify(self) -> VerifyResult: ...
    def list_tools(self) -> list[Tool]: ...
    def call_tool(self, name: str, /, **arguments: _JsonValue) -> _JsonValue: ...
    def call_tool_result(self, name: str, /, **arguments: _JsonValue) -> ToolCallResult: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_args: Union[type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

@final
class AsyncEnvClient:
    def __new__(
        cls,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        request_timeout: Optional[float] = 60.0,
        keepalive_interval: Optional[float] = 5.0,
        max_message_bytes: int = 104857600,
    ) -> Self: ...
    @property
    def url(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    async def connect(self) -> Self: ...
    async def reset(self, **kwargs: _JsonValue) -> StepResult: ...
    async def step(self, action: Mapping[str, _JsonValue]) -> StepResult: ...
    async def state(self) -> dict[str, _JsonValue]: ...
    async def verify(self) -> VerifyResult: ...
    async def list_tools(self) -> list[Tool]: ...
    async def call_tool(self, name: str, /, **arguments: _JsonValue) -> _JsonValue: ...
    async def call_tool_result(self, name: str, /, **arguments: _JsonValue) -> ToolCallResult: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        *args: Union[type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

@disjoint_base
class Pool:
    def __new__(
        cls,
        urls: Union[str, list[str], tuple[str, ...]],
        max_sessions_per_server: int = 64,
        *,
        connect_timeout: float = 10.0,
        request_timeout: Optional[float] = 60.0,
        keepalive_interval: Optional[float] = 5.0,
        max_message_bytes: int = 104857600,
    ) -> Self: ...
    @property
    def capacity(self) -> int: ...
    def stats(self) -> list[dict[str, Any]]: ...
    async def acquire(self) -> AsyncEnvClient: ...
