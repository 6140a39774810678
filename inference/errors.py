"""The one error type of inference: a short machine-readable kind, an HTTP-like status, a message.

Decoding and model loading raise it for input they refuse; the service answers it as JSON
(`serving.errors.error_response`), the catalogue writes it as the row's error.
"""

from __future__ import annotations


class ServiceError(ValueError):
    """A request the service does not serve: a short machine-readable kind, the HTTP status, a message."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    def to_dict(self) -> dict[str, str | int]:
        return {"error": str(self), "kind": self.kind, "status": self.status}
