"""SQL store: models, engine and session factory, migrations, and keyword-only queries.

Queries add and flush but never commit: the service layer commits once, so a change and its
audit event land together.
"""

from app.store.audit import append_audit, audit_after, latest_audit_id, list_audit
from app.store.db import (
    DatabaseOptions,
    alembic_config,
    make_engine,
    make_session_factory,
    migrate,
    normalize_url,
    ping,
)
from app.store.edits import (
    RetriedEdit,
    add_edits,
    claim_pending_edits,
    count_edits,
    edits_by_ids,
    edits_of_expert,
    get_edit,
    list_edits,
    pending_edit,
    retry_failed_edit,
    set_edit_status,
    set_inferred_subject,
)
from app.store.errors import (
    AuditLogIsAppendOnly,
    InvalidCursor,
    InvalidTransition,
    RecordNotFound,
)
from app.store.experts import (
    add_expert,
    get_expert,
    get_expert_by_name,
    list_experts,
    set_expert_status,
)
from app.store.idempotency import add_idempotency_key, get_idempotency_key
from app.store.models import (
    IDEMPOTENCY_KEY_LENGTH,
    AuditEvent,
    Base,
    Edit,
    Expert,
    IdempotencyKey,
    StackState,
    TrainingRun,
)
from app.store.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from app.store.recovery import RecoveryReport, RequeuedEdit, requeue_interrupted
from app.store.runs import (
    active_run,
    create_run,
    finish_run,
    get_run,
    is_second_active_run,
    list_runs,
    start_run,
    update_run_progress,
)
from app.store.stack import bump_stack_version, get_stack_version
from app.store.trainer_lock import TrainerLock
from app.store.types import utcnow

__all__ = [
    "TrainerLock",
    "DEFAULT_LIMIT",
    "IDEMPOTENCY_KEY_LENGTH",
    "MAX_LIMIT",
    "AuditEvent",
    "DatabaseOptions",
    "AuditLogIsAppendOnly",
    "Base",
    "Edit",
    "Expert",
    "InvalidCursor",
    "InvalidTransition",
    "pending_edit",
    "Page",
    "RecordNotFound",
    "RecoveryReport",
    "RequeuedEdit",
    "RetriedEdit",
    "IdempotencyKey",
    "StackState",
    "TrainingRun",
    "active_run",
    "add_edits",
    "add_expert",
    "add_idempotency_key",
    "alembic_config",
    "append_audit",
    "bump_stack_version",
    "claim_pending_edits",
    "count_edits",
    "create_run",
    "edits_by_ids",
    "edits_of_expert",
    "finish_run",
    "get_edit",
    "get_expert",
    "get_expert_by_name",
    "get_idempotency_key",
    "get_run",
    "get_stack_version",
    "is_second_active_run",
    "list_audit",
    "audit_after",
    "latest_audit_id",
    "list_edits",
    "list_experts",
    "list_runs",
    "make_engine",
    "make_session_factory",
    "migrate",
    "normalize_url",
    "ping",
    "requeue_interrupted",
    "retry_failed_edit",
    "set_edit_status",
    "set_expert_status",
    "set_inferred_subject",
    "start_run",
    "update_run_progress",
    "utcnow",
]
