"""What the smoke test and the compose check both prove through the api: a sign-up reaches
SUCCEEDED with its mail delivered, and a task enqueued by `POST /tasks` reaches SUCCEEDED."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import httpx

from scripts.containers.engine import say

T = TypeVar("T")
RUN_SECONDS = 90.0


def wait_until(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll until `check` returns something other than None (or False), within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.25)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_run(http: httpx.Client, run_id: str) -> dict[str, object]:
    def finished() -> dict[str, object] | None:
        run: dict[str, object] = http.get(f"/tasks/{run_id}").raise_for_status().json()
        return run if run["state"] in ("SUCCEEDED", "FAILED") else None

    run = wait_until(finished, RUN_SECONDS, f"run {run_id} to finish")
    assert run["state"] == "SUCCEEDED", run
    return run


def sign_up(http: httpx.Client, delivered_to: Callable[[str], bool]) -> str:
    """A new user through the api; returns the id of its welcome run once the mail is in."""
    email = f"smoke-{uuid.uuid4().hex[:12]}@example.com"
    response = http.post("/users", json={"email": email, "full_name": "Smoke Test"})
    assert response.status_code == 201, response.text
    run_id = str(response.json()["welcome_run_id"])
    wait_for_run(http, run_id)
    wait_until(lambda: delivered_to(email), 30, f"the welcome mail to {email}")
    say(f"sign-up {email}: welcome run {run_id} SUCCEEDED, mail delivered")
    return run_id


def enqueue(http: httpx.Client, admin_token: str, name: str, kwargs: dict[str, object]) -> str:
    response = http.post(
        "/tasks",
        json={"name": name, "kwargs": kwargs},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert response.status_code == 202, response.text
    run_id = str(response.json()["id"])
    wait_for_run(http, run_id)
    say(f"POST /tasks {name}: run {run_id} SUCCEEDED")
    return run_id
