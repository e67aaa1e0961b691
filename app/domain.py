"""Statuses, audit actions and API-key scopes shared by every layer (plain enums: no torch, no SQL)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from enum import StrEnum


class EditStatus(StrEnum):
    PENDING = "pending"
    PLANNED = "planned"
    TRAINING = "training"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    # Withdrawn by a client before any expert served it (DELETE /v1/edits/{id}); never trained.
    CANCELLED = "cancelled"
    # DELETE on an applied edit: its expert is retrained without it and still serves it until
    # the replacement is live; then `retracted`.
    RETRACTING = "retracting"
    RETRACTED = "retracted"


class SubjectSource(StrEnum):
    """Where an edit's subject came from."""

    CLIENT = "client"  # sent with the edit
    INFERRED = "inferred"  # picked by the base model among the prompt's spans (the edit named none)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process died mid-run; its edits went back to pending


class RunTrigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"


class ExpertStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    # Taken out of the active set by an operator (`lemoe experts quarantine`) because its files
    # are bad: no process loads it; activating it again checks its files first.
    QUARANTINED = "quarantined"


class AuditAction(StrEnum):
    EDIT_SUBMITTED = "edit.submitted"
    EDIT_PLANNED = "edit.planned"
    EDIT_APPLIED = "edit.applied"
    EDIT_FAILED = "edit.failed"
    EDIT_REQUEUED = "edit.requeued"
    EDIT_RETRIED = "edit.retried"  # a failed edit sent back to pending by a client
    EDIT_ROLLED_BACK = "edit.rolled_back"
    EDIT_RESTORED = "edit.restored"
    EDIT_SUPERSEDED = "edit.superseded"  # a newer edit of the same fact now wins its prompt
    EDIT_SUBJECT_INFERRED = "edit.subject_inferred"  # the edit named no subject; the server found one
    EDIT_CANCELLED = "edit.cancelled"
    EDIT_RETRACTION_REQUESTED = "edit.retraction_requested"
    EDIT_RETRACTED = "edit.retracted"
    EDIT_RETRACTION_FAILED = "edit.retraction_failed"  # retraining failed: the edit is applied again
    EDIT_RETRAINED = "edit.retrained"  # kept by the expert that replaced its own (another edit was retracted)
    RUN_CREATED = "training_run.created"
    RUN_STARTED = "training_run.started"
    RUN_FINISHED = "training_run.finished"
    RUN_FAILED = "training_run.failed"
    RUN_INTERRUPTED = "training_run.interrupted"
    EXPERT_REGISTERED = "expert.registered"
    EXPERT_ACTIVATED = "expert.activated"
    EXPERT_DEACTIVATED = "expert.deactivated"
    # A process could not load an active expert (missing/corrupt file) and serves the others;
    # once per process, expert and reason.
    EXPERT_LOAD_FAILED = "expert.load_failed"
    EXPERT_QUARANTINED = "expert.quarantined"
    EXPERT_REPLACED = "expert.replaced"  # retrained without retracted edits; the new one took its place
    # A folder under the experts directory that no expert row names (a crash's leftover) was removed.
    EXPERT_FILES_PRUNED = "expert_files.pruned"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"


class Scope(StrEnum):
    """What an API key may do; each route declares the one it needs (app/api/auth.py)."""

    GENERATE = "generate"  # generation, the OpenAI-compatible routes, the model list
    EDITS_WRITE = "edits:write"  # submit, retry, cancel and retract edits; trigger training
    READ = "read"  # edits, runs, experts, the audit log
    ADMIN = "admin"  # activate and deactivate experts, manage keys; implies every other scope

    def granted_by(self, scopes: AbstractSet[Scope]) -> bool:
        return self in scopes or Scope.ADMIN in scopes


class AuthMode(StrEnum):
    """LEMOE_AUTH: when a request needs an API key."""

    AUTO = "auto"  # as soon as any key exists; before that, loopback clients only
    ON = "on"  # always (no key yet: only /healthz, /readyz and an open /metrics answer)
    OFF = "off"  # never: anyone who reaches the port may do anything (X-Actor names them)
