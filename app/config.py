"""All settings, from environment variables (prefix LEMOE_, plus DATABASE_URL) or a .env file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.domain import AuthMode


class Settings(BaseSettings):
    """One place for configuration; nothing else reads os.environ."""

    model_config = SettingsConfigDict(env_prefix="LEMOE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("lemoe-data")
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "LEMOE_DATABASE_URL"))
    # A local Hugging Face causal-LM directory; unset means the bundled SmolLM2-135M-Instruct.
    model_path: Path | None = None
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    # Where the bundled GGUF's converted checkpoint is cached; unset: <data_dir>/model-cache.
    model_cache: Path | None = None

    # Editor (see app/lemoe/config.py for the meaning of each).
    adaptor_layer: int | None = None  # None: the editor's default for the model's depth
    gate_threshold: float | None = None  # None: the editor's calibrated default
    # Edits that name a subject fire only where it is mentioned; False: sentence keys only.
    subject_keys: bool | None = None
    subject_threshold: float | None = None  # None: the editor's calibrated default
    # Edits sent without a subject get one the base model picks among the prompt's spans
    # (recorded on the edit as inferred); False: they route by their wording alone.
    infer_subjects: bool | None = None
    # Such edits also fire only where the prompt asks what they ask about the subject (relation
    # keys); False: the subject alone decides. The threshold: None keeps the editor's default.
    relation_keys: bool = True
    relation_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # Among the edits that may serve a prompt, the route score less this times the relation
    # cosine's shortfall from 1 decides; None: the editor's default (0.25); 0: the route score alone.
    relation_rank_weight: float | None = Field(default=None, ge=0.0, le=10.0)
    # Relation keys weigh each token by its rarity (the tokenizer's merge order); None: the
    # editor's default (on); False: a plain mean.
    relation_token_weights: bool | None = None
    # ... and only where all of the subject matches, not just its last token (span keys); False:
    # its last token decides. The threshold: None keeps the editor's default.
    subject_span_keys: bool = True
    subject_span_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # ... and only where the prompt spells the subject with the edit's own tokens (any case);
    # None: the editor's default (on).
    subject_token_check: bool | None = None
    # Each expert learns one code per edit and answers a request with the code of the edit that
    # routed it; None: the editor's default (on). Experts keep what they were trained with.
    edit_codes: bool | None = None
    # Where a new expert adds to the adaptor's output: "answer" (from the prompt's last token on;
    # 43% less training CPU) or "all" (every token); None: the editor's default ("answer").
    # Experts keep what they were trained with.
    expert_positions: Literal["answer", "all"] | None = None
    # What training computes in: "auto" (bfloat16 where the CPU or GPU multiplies it natively,
    # else the model's own dtype), "full" (the model's own dtype) or "bfloat16"; None: "auto".
    # Serving is not touched; experts are float32 whichever trained them.
    train_precision: Literal["auto", "full", "bfloat16"] | None = None
    # An expert's first steps train on its edits' own prompts alone, until their loss is below
    # train_warmup_loss (None: the editor's default), then on every example; False: every example
    # from the first step (slower, about the same quality: docs/BENCHMARKS.md).
    train_warmup: bool = True
    train_warmup_loss: float | None = Field(default=None, gt=0)
    edits_per_expert: int = Field(default=16, ge=1, le=256)
    planning: bool = True
    # Training knobs for tests and experiments; None: the editor's default (app/lemoe/config.py).
    train_max_steps: int | None = Field(default=None, ge=1)
    train_augmentations: int | None = Field(default=None, ge=0)
    train_loss_threshold: float | None = Field(default=None, ge=0)
    # Also train each edit in the model's chat form (when it has a chat template); None: default (on).
    train_chat_examples: bool | None = None

    # The check before an expert goes live (docs/API.md): greedy answers of its own edits, a
    # fixed locality sample and the `check_others` live edits nearest to it, through the stack
    # with and without it. Below any minimum its edits fail (with the figures) and it never
    # serves. Off: every trained expert goes live.
    check_enabled: bool = True
    check_min_edit_rate: float = Field(default=0.75, ge=0, le=1)  # its edits answered (target in the output)
    check_min_locality: float = Field(default=1.0, ge=0, le=1)  # locality prompts answered as before
    check_min_others_kept: float = Field(default=0.9, ge=0, le=1)  # nearest live edits answered as before
    check_others: int = Field(default=16, ge=0, le=256)

    # Worker schedule.
    worker_enabled: bool = True
    worker_interval_s: float = Field(default=30.0, gt=0)
    worker_min_pending: int = Field(default=1, ge=1)
    worker_max_batch: int = Field(default=64, ge=1)
    # How often the worker looks for runs queued by another process (an API replica).
    worker_poll_interval_s: float = Field(default=2.0, gt=0)
    # How often a process checks the active-stack version in SQL and reloads; 0: never.
    stack_poll_interval_s: float = Field(default=5.0, ge=0)
    # Start-up runs `alembic upgrade head` unless this is set (LEMOE_SKIP_MIGRATE, as the
    # container entrypoint reads it: a separate job migrated already).
    skip_migrate: bool = False

    # Request limits.
    max_edits_per_request: int = Field(default=100, ge=1)
    max_text_chars: int = Field(default=2000, ge=1)
    max_new_tokens_limit: int = Field(default=256, ge=1)
    max_rephrases: int = Field(default=10, ge=0)
    max_chat_messages: int = Field(default=100, ge=1)  # per chat completion request
    # Concurrent generations decode together in one batch of at most this many rows; at most
    # max_waiting_generations more wait for a place, and past that a request gets 429 overloaded.
    max_batch_size: int = Field(default=16, ge=1, le=512)
    max_waiting_generations: int = Field(default=64, ge=0)

    # Time limits: a hung client, model or database costs a bounded time, then a clear error.
    # A generation stops at its next token past this (503 generation_timeout) or when its client
    # hangs up.
    generation_timeout_s: float = Field(default=60.0, gt=0)
    # The whole request body must arrive within this, or 408 and the connection is closed.
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    # Database (503 database_unavailable + Retry-After when one is exceeded).
    db_connect_timeout_s: float = Field(default=5.0, gt=0)  # PostgreSQL; libpq waits >= 2 s
    db_statement_timeout_s: float = Field(default=30.0, ge=0)  # PostgreSQL; 0: no limit
    db_pool_timeout_s: float = Field(default=5.0, gt=0)  # wait for a free pooled connection
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    sqlite_busy_timeout_s: float = Field(default=30.0, ge=0)  # wait for SQLite's write lock

    # Access control (docs/API.md, "Access control"). auto: API keys are required as soon as one
    # exists; until then only loopback clients are served and `lemoe serve` refuses any other
    # interface. on: always required. off: never (a warning at start).
    auth: AuthMode = AuthMode.AUTO
    # /metrics without a key; False: it needs a key with the read scope (when keys are required).
    metrics_public: bool = True
    # Requests per minute per API key (token buckets, per process); 0: no limit.
    rate_limit_generate_per_min: int = Field(default=0, ge=0)  # the generate-scope routes
    rate_limit_edits_per_min: int = Field(default=0, ge=0)  # the edits:write routes
    # A first admin key from the deployment (e.g. a Docker secret): at start-up a key named
    # admin_key_name with the admin scope and this secret is created unless it exists. The file
    # wins over the variable; only its hash is stored.
    admin_key: SecretStr | None = None
    admin_key_file: Path | None = None
    admin_key_name: str = "admin"
    # GET /v1/events: how often a stream looks for new audit events and run progress, and how
    # long it may stay quiet before a keep-alive comment.
    events_poll_interval_s: float = Field(default=0.5, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    # A stream ends after this however it was asked (an EventSource reconnects by itself, resuming
    # with Last-Event-ID): no connection is held forever.
    events_max_stream_s: float = Field(default=3600.0, gt=0)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"

    @field_validator("admin_key", "admin_key_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """LEMOE_ADMIN_KEY= (as compose passes an unset variable on) means no key."""
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    def admin_secret(self) -> str | None:
        """The deployment's admin key secret: LEMOE_ADMIN_KEY_FILE's content, else LEMOE_ADMIN_KEY."""
        if self.admin_key_file is not None:
            return self.admin_key_file.read_text(encoding="utf-8").strip() or None
        return self.admin_key.get_secret_value().strip() or None if self.admin_key is not None else None

    @property
    def experts_dir(self) -> Path:
        return self.data_dir / "experts"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "model-cache"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lemoe.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
