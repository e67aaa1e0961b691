"""ServiceError tree: the errors a client can act on, as plain exceptions.

Each carries what an HTTP answer needs as data (`status_code`, `type`, `message`, `headers`,
`param`); `app.api.errors` renders them. Nothing here imports FastAPI or Starlette, so the
services and the worker raise these without loading the HTTP stack.
"""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    """An error a client can act on; `status_code` and `type` say what kind."""

    status_code: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.param = param  # the request field at fault, where known (OpenAI's error shape names it)


class InvalidInput(ServiceError, ValueError):
    """A request value the service cannot accept; the message names it and what is allowed."""

    status_code = 422
    type = "invalid_input"


class InvalidCursor(InvalidInput):
    type = "invalid_cursor"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key this actor already used for a different request body."""

    type = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request body; send the "
            "same body to get the same edits back, or use a new key for new edits"
        )


class NotFound(ServiceError, LookupError):
    status_code = 404
    type = "not_found"


class EditNotFound(NotFound):
    def __init__(self, edit_id: int) -> None:
        super().__init__(f"edit {edit_id} does not exist")


class ExpertNotFound(NotFound):
    def __init__(self, expert_id: int) -> None:
        super().__init__(f"expert {expert_id} does not exist")


class RunNotFound(NotFound):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"training run {run_id} does not exist")


class Conflict(ServiceError):
    """The request is well-formed but the current state does not allow it."""

    status_code = 409
    type = "conflict"


class RunAlreadyActive(Conflict):
    """A run is queued or running; the response's Location header points at it."""

    type = "run_already_active"

    def __init__(self, run_id: int, status: str) -> None:
        super().__init__(
            f"training run {run_id} is already {status}; follow it at /v1/training-runs/{run_id}",
            headers={"Location": f"/v1/training-runs/{run_id}"},
        )
        self.run_id = run_id


class NothingToTrain(Conflict):
    type = "nothing_to_train"


class ExpertStateConflict(Conflict):
    type = "expert_state_conflict"


class EditStateConflict(Conflict):
    """The edit's status does not allow the change (e.g. retrying an edit that has not failed)."""

    type = "edit_state_conflict"


class ExpertFilesInvalid(Conflict):
    """An expert's files are missing or do not match the checksum in its SQL row."""

    type = "expert_files_invalid"


class NotReady(ServiceError):
    status_code = 503
    type = "not_ready"


RETRY_AFTER_S = 5  # what 503s for a busy or unreachable dependency suggest


class GenerationTimeout(ServiceError):
    """A generation ran past LEMOE_GENERATION_TIMEOUT_S and was stopped."""

    status_code = 503
    type = "generation_timeout"

    def __init__(self, limit_s: float, tokens: int) -> None:
        super().__init__(
            f"the generation was stopped after {tokens} tokens: it ran past the {limit_s:g} s limit "
            "(LEMOE_GENERATION_TIMEOUT_S); retry later or ask for fewer max_new_tokens",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


class Overloaded(ServiceError):
    """Every place in the generation batch is taken and the waiting queue is full."""

    status_code = 429
    type = "overloaded"

    def __init__(self, waiting: int) -> None:
        super().__init__(
            f"the server is at capacity: {waiting} generations already wait for a place in the batch "
            "(LEMOE_MAX_BATCH_SIZE, LEMOE_MAX_WAITING_GENERATIONS); retry after the Retry-After seconds",
            headers={"Retry-After": "1"},
        )


class GenerationCancelled(ServiceError):
    """The client hung up and its generation was stopped; nobody reads this answer."""

    status_code = 499  # nginx's "client closed request": shows up as such in logs and metrics
    type = "client_closed_request"

    def __init__(self, tokens: int) -> None:
        super().__init__(f"the client closed the connection; the generation stopped after {tokens} tokens")


class Unauthenticated(ServiceError):
    """No API key, or one this server does not know (or that was revoked)."""

    status_code = 401
    type = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """A valid key without the scope the route needs; the message names that scope."""

    status_code = 403
    type = "forbidden"


class RateLimited(ServiceError):
    """A key sent more requests of one kind than its per-minute limit allows."""

    status_code = 429
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class KeyNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no API key is named {name!r}; `lemoe keys list` (or GET /v1/keys) lists them")


class KeyNameTaken(Conflict):
    type = "key_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"an API key named {name!r} exists already (revoked keys keep their names, so that the "
            "audit log names one key per name); choose another name"
        )


class KeyAlreadyRevoked(Conflict):
    type = "key_already_revoked"

    def __init__(self, name: str) -> None:
        super().__init__(f"API key {name!r} is already revoked")
