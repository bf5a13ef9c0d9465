"""Secrets never reach the logs: run the stack with distinctive ones, use it (including a
refused token), then search everything the processes wrote."""

from collections.abc import Iterator

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.fixtures.ports import free_port
from tests.fixtures.processes import Processes
from tests.fixtures.smtp import Mailbox
from tests.fixtures.waiting import wait_until

SECRETS = {
    "ADMIN_TOKEN": "admin-Zq81-never-log-me",
    "API_TOKENS": "client-Pk27-never-log-me",
    "SMTP_PASSWORD": "smtp-Wx55-never-log-me",
    "DB_PASSWORD": "db-Ty09-never-log-me",  # trust auth ignores it, but it is in the URL
}


class Authenticator:
    def __call__(
        self, server: SMTP, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password.decode() == SECRETS["SMTP_PASSWORD"]
        return AuthResult(success=ok)


@pytest.fixture
def smtp_with_auth() -> Iterator[Mailbox]:
    mailbox = Mailbox(port=free_port())
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=mailbox.port,
        authenticator=Authenticator(),
        auth_require_tls=False,
    )
    controller.start()
    yield mailbox
    controller.stop()


def test_tokens_and_passwords_never_appear_in_logs(
    processes: Processes, smtp_with_auth: Mailbox
) -> None:
    database = processes.env["DATABASE_URL"].replace(
        "postgres@", f"postgres:{SECRETS['DB_PASSWORD']}@", 1
    )
    assert SECRETS["DB_PASSWORD"] in database
    processes.env.update(
        DATABASE_URL=database,
        ADMIN_TOKEN=SECRETS["ADMIN_TOKEN"],
        API_TOKENS=SECRETS["API_TOKENS"],
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_with_auth.port),
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD=SECRETS["SMTP_PASSWORD"],
        LOG_LEVEL="INFO",
    )
    _, base = processes.api()
    processes.worker()
    processes.beat()
    client = {"Authorization": f"Bearer {SECRETS['API_TOKENS']}"}
    admin = {"Authorization": f"Bearer {SECRETS['ADMIN_TOKEN']}"}
    with httpx.Client(base_url=base) as http:
        created = http.post(
            "/users", json={"email": "s@example.com", "full_name": "S"}, headers=client
        )
        assert created.status_code == 201
        assert http.get("/tasks", headers=admin).status_code == 200
        assert http.get("/users", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/users", headers=admin).status_code == 200
    smtp_with_auth.wait_for(1)  # the worker logged in to SMTP with the password

    processes.stop_all()
    wait_until(lambda: all(p.popen.poll() is not None for p in processes.started), 30, "exit")
    output = "\n".join(proc.output() for proc in processes.started)
    assert "task finished" in output  # the logs are really there
    for name, secret in SECRETS.items():
        assert secret not in output, f"{name} appears in the logs"
