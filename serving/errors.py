"""The service's one error type and its JSON answer: {"error": message, "kind": kind, "status": code}.

Everything the service refuses (bad uploads, unknown models or request ids, overload) is raised as a
`ServiceError` (inference/errors.py) and answered by `error_response`, which also counts it in the
`galaxyvit_errors` metric.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from inference.errors import ServiceError

__all__ = ["ServiceError", "error_response"]


def error_response(
    error: ServiceError, retry_after_s: int | None = None, close: bool = False, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON answer to `error`; 429 and 503 carry Retry-After when `retry_after_s` is given. `close`:
    end the connection after it (the request body was not read to its end)."""
    from serving.metrics import get_metrics

    get_metrics().errors.labels(error.kind).inc()
    retry = retry_after_s if retry_after_s and error.status in (429, 503) else None
    headers = dict(headers or {})
    if retry:
        headers["Retry-After"] = str(retry)
    if close:
        headers["Connection"] = "close"
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers or None)
