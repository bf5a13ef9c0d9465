import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import SEND_JSON
from shared.beat import LAST_SENT_KEY, SCHEDULE_KEY
from shared.contracts import CONTRACTS, PRUNE_LOGS, RELAY_OUTBOX, SEND_WELCOME_EMAIL, Queue
from shared.cron import CronSchedule
from shared.models import TaskRun, TaskState
from shared.schedules import Cron, Every, effective_schedule
from tests.fixtures.api import ADMIN, CLIENT, post_bytes
from tests.fixtures.cursors import forged_cursor

PRUNE = {"name": "maintenance.prune_logs", "kwargs": {"days": 7}}
NIL = "00000000-0000-0000-0000-000000000000"


async def test_enqueue_by_name_is_202_and_readable(client: AsyncClient, db: AsyncSession) -> None:
    response = await client.post("/tasks", json=PRUNE, headers={**ADMIN, "X-Request-ID": "r-1"})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["name"] == "maintenance.prune_logs"
    assert accepted["state"] == "QUEUED"

    run = (await client.get(f"/tasks/{accepted['id']}", headers=CLIENT)).json()
    assert run["kwargs"] == {"days": 7}
    assert run["request_id"] == "r-1"
    assert run["attempts"] == 0
    assert set(run) == {
        "id", "name", "kwargs", "state", "result", "error", "attempts", "request_id",
        "created_at", "published_at", "started_at", "finished_at",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "maintenance.nope", "kwargs": {}}, "no task named"),
        ({"name": "outbox.relay", "kwargs": {}}, "no task named"),  # not enqueueable
        ({"name": "maintenance.prune_logs", "kwargs": {"days": "7"}}, "days"),
        ({"name": "maintenance.prune_logs", "kwargs": {"days": 0}}, "days"),
        ({"name": "maintenance.prune_logs", "kwargs": {"days": 7, "x": 1}}, "x"),
        ({"name": "maintenance.prune_logs", "kwargs": {}}, "days"),
        ({"name": "users.send_welcome_email", "kwargs": {"user_id": 2**70}}, "user_id"),
    ],
)
async def test_unknown_names_and_invalid_kwargs_are_422_naming_the_problem(
    client: AsyncClient, body: dict[str, object], problem: str
) -> None:
    response = await client.post("/tasks", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert problem in response.json()["detail"]


async def test_idempotency_key_returns_the_same_run(client: AsyncClient) -> None:
    headers = {**ADMIN, "Idempotency-Key": "k-123"}
    first = (await client.post("/tasks", json=PRUNE, headers=headers)).json()
    again = await client.post("/tasks", json=PRUNE, headers=headers)
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    other = await client.post("/tasks", json={**PRUNE, "kwargs": {"days": 8}}, headers=headers)
    assert other.status_code == 409
    fresh = (await client.post("/tasks", json=PRUNE, headers=ADMIN)).json()
    assert fresh["id"] != first["id"]


async def test_retry_makes_a_new_run_of_a_failed_one_only(
    client: AsyncClient, db: AsyncSession
) -> None:
    failed = TaskRun(
        id=uuid.uuid4(), name="maintenance.prune_logs", kwargs={"days": 3},
        state=TaskState.FAILED, attempts=1, error="boom",
    )  # fmt: skip
    done = TaskRun(
        id=uuid.uuid4(), name="maintenance.prune_logs", kwargs={"days": 3},
        state=TaskState.SUCCEEDED, attempts=1,
    )  # fmt: skip
    db.add_all([failed, done])
    await db.flush()

    retried = await client.post(f"/tasks/{failed.id}/retry", headers=ADMIN)
    assert retried.status_code == 202
    new = (await client.get(f"/tasks/{retried.json()['id']}", headers=ADMIN)).json()
    assert new["id"] != str(failed.id)
    assert (new["name"], new["kwargs"], new["state"]) == (failed.name, failed.kwargs, "QUEUED")
    assert (await client.post(f"/tasks/{done.id}/retry", headers=ADMIN)).status_code == 409
    assert (await client.post(f"/tasks/{uuid.uuid4()}/retry", headers=ADMIN)).status_code == 404


# A fixed UUID: a random one differs between xdist workers, which then refuse to run.
@pytest.mark.parametrize("run_id", [NIL, "not-a-uuid", "1", "%00"])
async def test_unknown_or_malformed_run_ids_are_404(client: AsyncClient, run_id: str) -> None:
    assert (await client.get(f"/tasks/{run_id}", headers=CLIENT)).status_code == 404


async def test_list_runs_newest_first_with_filters_andforged_cursor(
    client: AsyncClient, db: AsyncSession
) -> None:
    now = datetime.now(UTC)
    runs = [
        TaskRun(
            id=uuid.uuid4(), name="maintenance.prune_logs" if i % 2 else "outbox.relay",
            kwargs={}, state=TaskState.FAILED if i == 3 else TaskState.SUCCEEDED, attempts=1,
            created_at=now - timedelta(minutes=i),
        )
        for i in range(6)
    ]  # fmt: skip
    db.add_all(runs)
    await db.flush()

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/tasks", params=params, headers=ADMIN)).json()
        seen += [r["id"] for r in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [str(r.id) for r in runs]
    by_name = (await client.get("/tasks?name=outbox.relay", headers=ADMIN)).json()["items"]
    assert len(by_name) == 3
    failed = (await client.get("/tasks?state=FAILED", headers=ADMIN)).json()["items"]
    assert [r["id"] for r in failed] == [str(runs[3].id)]
    assert (await client.get("/tasks?state=NOPE", headers=ADMIN)).status_code == 422
    assert (await client.get("/tasks?cursor=WyJ4Il0=", headers=ADMIN)).status_code == 422


async def test_schedules_come_from_the_code_and_beats_record_of_its_sends(
    client: AsyncClient, redis: Redis
) -> None:
    # What redbeat leaves for an entry it has never sent (a due time estimated from the
    # moment it wrote the entry): not what GET /schedules reports.
    await redis.zadd(SCHEDULE_KEY, {"redbeat:deactivate-inactive-users": 1_900_000_000})
    before = datetime.now(UTC)
    response = await client.get("/schedules", headers=ADMIN)
    after = datetime.now(UTC)
    assert response.status_code == 200
    entries = {entry["name"]: entry for entry in response.json()}
    periodic = {c.periodic.entry: c for c in CONTRACTS.values() if c.periodic is not None}
    assert set(entries) == set(periodic)
    for name, contract in periodic.items():
        entry = entries[name]
        assert entry["task"] == contract.name
        assert entry["last_run_at"] is None  # never sent
        schedule = effective_schedule(contract.periodic)  # type: ignore[arg-type]
        assert entry["schedule"] == schedule.describe()
        if isinstance(schedule, Cron):
            cron = CronSchedule.parse(schedule.expression)
            assert entry["next_run_at"] in {
                _utc(cron.next_after(before)),
                _utc(cron.next_after(after)),
            }
        else:
            assert entry["next_run_at"] is None  # an interval counts from its first send
    assert entries["deactivate-inactive-users"]["schedule"] == "15 3 * * *"

    # Beat's record of what it really sent.
    relay_sent = time.time() - 1
    await redis.hset(
        LAST_SENT_KEY,
        mapping={"prune-logs": "1795491900.0", "outbox-relay": repr(relay_sent)},
    )
    entries = {e["name"]: e for e in (await client.get("/schedules", headers=ADMIN)).json()}
    assert entries["prune-logs"]["last_run_at"] == "2026-11-24T03:45:00Z"
    assert entries["deactivate-inactive-users"]["last_run_at"] is None
    relay_next = datetime.fromisoformat(entries["outbox-relay"]["next_run_at"])
    interval = effective_schedule(RELAY_OUTBOX.periodic)  # type: ignore[arg-type]
    assert isinstance(interval, Every)
    assert relay_next.timestamp() == pytest.approx(relay_sent + interval.seconds, abs=0.001)


def _utc(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "key",
    [
        ["0001-01-01T00:00:00+14:00", NIL],  # before year 1 in UTC
        ["9999-12-31T23:59:59-14:00", NIL],  # after year 9999 in UTC
        ["2026-01-01T00:00:00", NIL],  # no offset
        ["2026-01-01T00:00:00+00:00", "not-a-uuid"],
        ["2026-01-01T00:00:00+00:00", 5],
        ["2026-01-01T00:00:00+00:00"],
        [1, 2, 3],
        [{"a": 1}, NIL],
    ],
)
async def test_forged_cursors_are_422(client: AsyncClient, key: list[object]) -> None:
    response = await client.get("/tasks", params={"cursor": forged_cursor(*key)}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json() == {
        "detail": "invalid cursor: pass next_cursor from a previous page unchanged"
    }


async def test_a_cursor_at_the_ends_of_the_date_range_pages_from_there(
    client: AsyncClient, db: AsyncSession
) -> None:
    run = TaskRun(id=uuid.uuid4(), name="outbox.relay", kwargs={}, attempts=0)
    db.add(run)
    await db.flush()
    latest = await client.get(
        "/tasks", params={"cursor": forged_cursor("9999-12-31T23:59:59+00:00", NIL)}, headers=ADMIN
    )
    assert [r["id"] for r in latest.json()["items"]] == [str(run.id)]
    earliest = await client.get(
        "/tasks", params={"cursor": forged_cursor("0001-01-01T00:00:00-14:00", NIL)}, headers=ADMIN
    )
    assert earliest.json() == {"items": [], "next_cursor": None}


async def test_an_idempotency_key_of_200_characters_is_kept_and_201_is_422(
    client: AsyncClient, db: AsyncSession
) -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F))  # every printable ASCII character
    key = (printable * 3)[:200]
    response = await client.post("/tasks", json=PRUNE, headers={**ADMIN, "Idempotency-Key": key})
    assert response.status_code == 202
    run = await db.get(TaskRun, uuid.UUID(response.json()["id"]))
    assert run is not None
    assert run.idempotency_key == key
    too_long = await client.post(
        "/tasks", json=PRUNE, headers={**ADMIN, "Idempotency-Key": key + "x"}
    )
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["type"] == "string_too_long"


@pytest.mark.parametrize("key", ["a\x00b", "a\x1fb", "a\x7fb"])
async def test_control_characters_in_an_idempotency_key_are_422(
    client: AsyncClient, key: str
) -> None:
    """PostgreSQL refuses a NUL in text: it must never get that far."""
    response = await client.post("/tasks", json=PRUNE, headers={**ADMIN, "Idempotency-Key": key})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


@pytest.mark.parametrize("name", ["\x00", "a\nb", "x" * 201])
async def test_a_name_filter_with_control_characters_or_too_long_is_422(
    client: AsyncClient, name: str
) -> None:
    response = await client.get("/tasks", params={"name": name}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "name"]


async def test_sql_looking_filters_and_keys_are_only_data(
    client: AsyncClient, db: AsyncSession
) -> None:
    sql = "x' OR '1'='1'; DROP TABLE task_runs;--"
    listed = await client.get("/tasks", params={"name": sql}, headers=ADMIN)
    assert listed.json() == {"items": [], "next_cursor": None}
    response = await client.post("/tasks", json=PRUNE, headers={**ADMIN, "Idempotency-Key": sql})
    run = await db.get(TaskRun, uuid.UUID(response.json()["id"]))
    assert run is not None
    assert run.idempotency_key == sql


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "maintenance.prune_logs", "kwargs": ', "application/json"),
        (b'{"name": "maintenance.prune_logs", "kwargs": []}', "application/json"),
        (b'{"name": "maintenance.prune_logs", "kwargs": {"days": 7}, "x": 1}', "application/json"),
        (
            b'{"name": "maintenance.prune_logs", "kwargs": {"days": 1' + b"0" * 5_000 + b"}}",
            "application/json",
        ),
        (b'{"name": "maintenance.prune_logs", "kwargs": {"days": NaN}}', "application/json"),
        (b'{"name": "maintenance.prune_logs", "kwargs": {"days": 1e999}}', "application/json"),
        (b'{"name": "\\u0000", "kwargs": {}}', "application/json"),
        (b'{"name": "\\ud800", "kwargs": {}}', "application/json"),
        (b'{"name": "maintenance.prune_logs", "kwargs": {"\\ud800": 1}}', "application/json"),
        (b'{"name": "x", "kwargs": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}", "application/json"),
        (b"\xff\xfe\xfd", "application/json"),
    ],
)
async def test_malformed_task_bodies_are_422(
    client: AsyncClient, content: bytes, content_type: str
) -> None:
    response = await post_bytes(client, "/tasks", content, content_type, ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "maintenance.prune_logs", "kwargs": {"days": 7}}', "text/plain"),
        (b"name=maintenance.prune_logs", "application/x-www-form-urlencoded"),
    ],
)
async def test_task_bodies_not_sent_as_json_are_415(
    client: AsyncClient, content: bytes, content_type: str
) -> None:
    response = await post_bytes(client, "/tasks", content, content_type, ADMIN)
    assert response.status_code == 415, response.text
    assert response.json() == {"detail": SEND_JSON}


@pytest.mark.parametrize(("method", "path"), [("POST", "/tasks"), ("PATCH", "/users/1")])
async def test_bodies_over_64_kib_are_413_on_every_route_that_takes_one(
    client: AsyncClient, method: str, path: str
) -> None:
    body = b'{"name": "' + b"x" * 70_000 + b'"}'
    response = await client.request(
        method, path, content=body, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 65536 bytes"}


async def test_task_types_lists_every_task_post_tasks_accepts_with_its_schemas(
    client: AsyncClient,
) -> None:
    assert (await client.get("/task-types", headers=CLIENT)).status_code == 403
    response = await client.get("/task-types", headers=ADMIN)
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert set(types) == {c.name for c in CONTRACTS.values() if c.enqueueable}
    assert RELAY_OUTBOX.name not in types
    for task in types.values():
        assert task["queue"] in {q.value for q in Queue}
        assert task["description"]
        assert task["args_schema"]["type"] == "object"
        assert task["args_schema"]["additionalProperties"] is False
    prune = types[PRUNE_LOGS.name]
    assert prune["queue"] == "maintenance"
    assert prune["args_schema"]["required"] == ["days"]
    assert prune["args_schema"]["properties"]["days"]["maximum"] == 36_500
    assert prune["result_schema"] == {"type": "integer"}
    assert types[SEND_WELCOME_EMAIL.name]["result_schema"] == {"type": "boolean"}


async def test_post_tasks_accepts_what_each_task_types_schema_says(client: AsyncClient) -> None:
    """No arguments at all: accepted exactly for the tasks whose schema requires none."""
    for task in (await client.get("/task-types", headers=ADMIN)).json():
        response = await client.post(
            "/tasks", json={"name": task["name"], "kwargs": {}}, headers=ADMIN
        )
        expected = 422 if task["args_schema"].get("required") else 202
        assert response.status_code == expected, (task["name"], response.text)


async def test_the_openapi_example_of_post_tasks_is_accepted_as_it_stands(
    client: AsyncClient, db: AsyncSession
) -> None:
    document = (await client.get("/openapi.json")).json()
    examples = document["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]
    values = [example["value"] for example in examples["examples"].values()]
    assert values
    for value in values:
        response = await client.post("/tasks", json=value, headers=ADMIN)
        assert response.status_code == 202, response.text
        run = await db.get(TaskRun, uuid.UUID(response.json()["id"]))
        assert run is not None
        assert run.kwargs == value["kwargs"]
