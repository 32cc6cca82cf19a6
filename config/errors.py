from __future__ import annotations


class DomainError(Exception):
    """A refused write or state transition, with a message a person can act on.
    Services raise it; views show it and the API answers it as JSON."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None, **extra) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra
