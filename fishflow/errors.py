"""fishflow's error tree, shaped by what the caller decides.

Every error says two things: whether trying the same work again can help (``retryable``) and
whether the whole run must stop because every other item would fail the same way (``fatal``).

    FishflowError
    ├── ConfigError              bad options: caught before any request (fatal)
    ├── SourceError              the source cannot be read at all (fatal)
    ├── SynthesisError           one request to a Fish Speech server failed
    │   ├── ServerUnavailable    refused, reset, timed out, truncated (retryable)
    │   ├── ServerBusy           429 / 503, may carry Retry-After (retryable)
    │   ├── ServerError          other 5xx (retryable, a bounded number of times)
    │   ├── BadAudio             200, but undecodable, wrong rate or implausible length (retryable)
    │   ├── RequestRejected      400 / 404 / 413 / 415 / 422: the same request fails again
    │   ├── AuthenticationFailed 401 / 403 (fatal)
    │   └── OutOfCredit          402 (fatal)
    ├── AllServersDown           no server answered for longer than the grace period (fatal)
    ├── OutputInUse              another run holds the output's lock (fatal)
    └── StorageError             writing audio or manifests failed (retryable or fatal)

Messages never contain credentials: request headers are not attached, only ids.
"""

from __future__ import annotations


class FishflowError(Exception):
    """Base of every error fishflow raises on purpose."""

    retryable: bool = False
    fatal: bool = False
    stage: str = "run"

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retryable: bool | None = None,
        fatal: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.attempts = 1
        if retryable is not None:
            self.retryable = retryable
        if fatal is not None:
            self.fatal = fatal


class ConfigError(FishflowError):
    fatal = True
    stage = "config"


class SourceError(FishflowError):
    fatal = True
    stage = "source"


class SynthesisError(FishflowError):
    stage = "synthesis"

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        http_status: int | None = None,
        retryable: bool | None = None,
        fatal: bool | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status, retryable=retryable, fatal=fatal)
        self.server = server


class ServerUnavailable(SynthesisError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        connection_failed: bool = False,
        timed_out: bool = False,
        server: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, server=server, http_status=http_status)
        self.connection_failed = connection_failed  # refused: the server never saw the request
        self.timed_out = timed_out


class ServerBusy(SynthesisError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        server: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, server=server, http_status=http_status)
        self.retry_after = retry_after


class ServerError(SynthesisError):
    retryable = True


class BadAudio(SynthesisError):
    retryable = True
    stage = "validation"


class RequestRejected(SynthesisError):
    retryable = False


class AuthenticationFailed(SynthesisError):
    fatal = True


class OutOfCredit(SynthesisError):
    fatal = True


class AllServersDown(FishflowError):
    fatal = True
    stage = "synthesis"


class OutputInUse(FishflowError):
    """Another run writes the same output: two writers would synthesise the same items."""

    fatal = True

    def __init__(self, message: str, *, holder_run_id: str | None = None) -> None:
        super().__init__(message)
        self.holder_run_id = holder_run_id


class StorageError(FishflowError):
    stage = "upload"
