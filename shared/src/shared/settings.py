"""The one settings object for the api, the worker, beat and Alembic.

Every value comes from the environment (or an optional `.env`), under the names the README's
settings table lists. Development defaults make `make run` work with no configuration; in
`production` the secrets must be set to something else, and start-up names the one that is not.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal, TypeAlias

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from shared.logs import LogFormat

Environment: TypeAlias = Literal["development", "test", "production"]

DEV_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/backend"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - development only; production refuses it
DEV_API_TOKEN = "dev-client-token"  # noqa: S105 - likewise


class InsecureSettingsError(ValueError):
    """A production process was given an empty or development secret."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    environment: Environment = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines for log collectors; readable text by default in development.
    log_format: LogFormat | None = None

    database_url: SecretStr = SecretStr(DEV_DATABASE_URL)
    db_pool_size: int = Field(default=10, ge=1, le=100)
    db_max_overflow: int = Field(default=5, ge=0, le=100)
    worker_db_pool_size: int = Field(default=2, ge=1, le=20)
    worker_synchronous_commit: bool = False

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_timeout: float = Field(default=10.0, gt=0)
    # Open SMTP sessions each worker process keeps and reuses (worker.smtp).
    smtp_pool_size: int = Field(default=50, ge=1, le=500)
    # PostgreSQL ends a worker session left idle inside a transaction this long (a frozen or
    # partitioned worker), releasing its row locks for the worker its runs went to.
    worker_idle_in_transaction_timeout: float = Field(default=30.0, gt=0)
    mail_from: str = "Backend <no-reply@example.com>"
    # Does the mail server offer SMTPUTF8? The API has no SMTP client to ask, and only such a
    # server can deliver to an address whose local part is not ASCII (shared.users.addresses).
    smtp_utf8: bool = False

    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    api_tokens: Annotated[list[SecretStr], NoDecode] = [SecretStr(DEV_API_TOKEN)]
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Loopback on a laptop; the api image sets 0.0.0.0, since a pod is reached on its own IP.
    api_bind_address: str = "127.0.0.1"

    # Delivery timings: tests shrink these so a kill-and-redeliver case takes seconds.
    task_soft_time_limit: int = Field(default=300, ge=1)
    task_time_limit: int = Field(default=360, ge=2)
    # How long a message may go unrenewed before Redis gives it to another worker. Live workers
    # renew what they hold every sixth of it (worker.visibility), so it bounds how soon a dead
    # worker's messages come back, whatever the task time limits are.
    broker_visibility_timeout: int = Field(default=30, ge=6)
    task_max_retries: int = Field(default=5, ge=0)
    task_retry_backoff_max: int = Field(default=600, ge=0)
    task_max_attempts: int = Field(default=10, ge=1)
    publish_timeout: float = Field(default=1.0, gt=0)

    # The outbox relay.
    outbox_relay_interval: float = Field(default=5.0, gt=0)
    outbox_grace_seconds: float = Field(default=10.0, ge=0)
    outbox_repair_after: float = Field(default=900.0, gt=0)
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Beat: the schedules are declared on the task contracts. BEAT_SCHEDULE_OVERRIDES replaces
    # some, as JSON from entry name to a crontab ("m h dom mon dow", UTC) or a number of seconds:
    # {"prune-logs": "2"}. The two SCHEDULE_* variables are the older way, still honoured.
    beat_schedule_overrides: dict[str, str] = {}
    schedule_deactivate_inactive_users: str | None = None
    schedule_prune_logs: str | None = None
    beat_lock_timeout: int = Field(default=15, ge=2)
    beat_max_loop_interval: int = Field(default=5, ge=1)

    # Which kind of worker this process is (worker.kinds: `concurrent` or `prefork`). It names
    # the worker's heartbeat files and its `worker` label in the metrics, so two workers on one
    # host (make run) never share a file.
    worker_name: str = Field(default="worker", pattern=r"^[a-z][a-z0-9-]{0,39}$")

    # Metrics servers. A pod must listen on all interfaces (0.0.0.0) for Prometheus to scrape
    # it; a laptop keeps them on the loopback. Under `make run` both workers share the host's
    # ports: the concurrent one serves on WORKER_METRICS_PORT, the prefork one on
    # PREFORK_METRICS_PORT (in a pod every worker has its own network: WORKER_METRICS_PORT).
    metrics_bind_address: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9808, ge=1, le=65535)
    beat_metrics_port: int = Field(default=9809, ge=1, le=65535)
    prefork_metrics_port: int = Field(default=9810, ge=1, le=65535)

    # Liveness files for the probes (worker.probe reads HEARTBEAT_DIR and WORKER_NAME itself,
    # from the environment only). Beat touches its file every tick (at most
    # BEAT_MAX_LOOP_INTERVAL apart); the worker's main process touches its file every
    # HEARTBEAT_INTERVAL seconds.

    heartbeat_dir: str = "/tmp"  # noqa: S108 - an emptyDir in the pods, plain /tmp on a laptop
    heartbeat_interval: float = Field(default=5.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: SecretStr) -> SecretStr:
        url = make_url(value.get_secret_value())
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+asyncpg")
        if url.drivername != "postgresql+asyncpg":
            raise ValueError("DATABASE_URL must be a postgresql+asyncpg:// URL")
        return SecretStr(url.render_as_string(hide_password=False))

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @model_validator(mode="after")
    def _timings_are_coherent(self) -> Settings:
        # No rule ties BROKER_VISIBILITY_TIMEOUT to the time limits: a live worker renews the
        # messages it holds (worker.visibility), so a task may run far longer than the timeout.
        if not self.task_soft_time_limit < self.task_time_limit:
            raise ValueError(
                "need TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT: the soft limit asks a task to "
                "stop before the hard limit kills it"
            )
        if not self.smtp_timeout < self.worker_idle_in_transaction_timeout:
            raise ValueError(
                "need SMTP_TIMEOUT < WORKER_IDLE_IN_TRANSACTION_TIMEOUT: a task waits on the "
                "mail server inside its transaction, and PostgreSQL would end that session"
            )
        return self

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        problems: list[str] = []
        admin = self.admin_token.get_secret_value()
        if admin in ("", DEV_ADMIN_TOKEN):
            problems.append("ADMIN_TOKEN is empty or the development default")
        clients = [token.get_secret_value() for token in self.api_tokens]
        if not clients or any(token in ("", DEV_API_TOKEN, admin) for token in clients):
            problems.append("API_TOKENS is empty, the development default, or the admin token")
        if self.smtp_username and not self.smtp_password.get_secret_value():
            problems.append("SMTP_PASSWORD is empty while SMTP_USERNAME is set")
        if self.database_url.get_secret_value() == DEV_DATABASE_URL:
            problems.append("DATABASE_URL is the development default")
        if problems:
            raise InsecureSettingsError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "text" if self.environment == "development" else "json"

    @cached_property
    def database(self) -> URL:
        return make_url(self.database_url.get_secret_value())

    def database_url_for(self, name: str) -> URL:
        """The same server and credentials, another database (tests: one per xdist worker)."""
        return self.database.set(database=name)


settings = Settings()
