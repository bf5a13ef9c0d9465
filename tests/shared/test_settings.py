import pytest
from pydantic import ValidationError

from shared.settings import DEV_ADMIN_TOKEN, Settings

STRONG = {
    "environment": "production",
    "admin_token": "a" * 40,
    "api_tokens": "b" * 40,
    "database_url": "postgresql+asyncpg://app:secret@db.internal/app",
}


def test_production_accepts_real_secrets() -> None:
    Settings(**STRONG)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"admin_token": DEV_ADMIN_TOKEN}, "ADMIN_TOKEN"),
        ({"admin_token": ""}, "ADMIN_TOKEN"),
        ({"api_tokens": "dev-client-token"}, "API_TOKENS"),
        ({"api_tokens": "a" * 40}, "API_TOKENS"),  # a client token equal to the admin token
        ({"smtp_username": "mailer"}, "SMTP_PASSWORD"),
        ({"database_url": "postgresql+asyncpg://postgres@127.0.0.1:5432/backend"}, "DATABASE_URL"),
    ],
)
def test_production_refuses_empty_or_default_secrets(override: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**{**STRONG, **override})  # type: ignore[arg-type]


def test_development_defaults_work_without_configuration() -> None:
    Settings(environment="development")


def test_api_tokens_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKENS", " one, two ,,three ")
    tokens = [token.get_secret_value() for token in Settings().api_tokens]
    assert tokens == ["one", "two", "three"]


def test_secrets_never_show_in_repr() -> None:
    text = repr(Settings(**STRONG))  # type: ignore[arg-type]
    assert "a" * 40 not in text
    assert "secret" not in text


def test_database_url_must_be_asyncpg() -> None:
    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        Settings(database_url="mysql://root@localhost/db")
    plain = Settings(database_url="postgresql://u@h/db")
    assert plain.database.drivername == "postgresql+asyncpg"


def test_the_soft_time_limit_must_come_before_the_hard_one() -> None:
    with pytest.raises(ValidationError, match="TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT"):
        Settings(task_soft_time_limit=100, task_time_limit=100)


def test_time_limits_may_exceed_the_visibility_timeout() -> None:
    """Live workers renew what they hold: an hour-long task with a 30 s timeout is fine."""
    hour_long = Settings(task_soft_time_limit=3500, task_time_limit=3600)
    assert hour_long.broker_visibility_timeout == 30


def test_smtp_timeout_must_end_before_postgresql_ends_an_idle_transaction() -> None:
    with pytest.raises(ValidationError, match="WORKER_IDLE_IN_TRANSACTION_TIMEOUT"):
        Settings(smtp_timeout=30, worker_idle_in_transaction_timeout=30)
