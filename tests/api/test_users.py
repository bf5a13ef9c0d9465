import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.deps import get_db
from api.errors import SEND_JSON
from api.main import create_app
from shared.contracts import SEND_WELCOME_EMAIL
from shared.db import make_sessionmaker
from shared.models import TaskRun, TaskState, User
from shared.settings import settings
from tests.fixtures.api import ADMIN, CLIENT, post_bytes
from tests.fixtures.cursors import forged_cursor


async def create(client: AsyncClient, email: str = "ada@example.com", **extra: object) -> dict:  # type: ignore[type-arg]
    response = await client.post(
        "/users", json={"email": email, "full_name": "Ada Lovelace", **extra}, headers=CLIENT
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_create_user_records_the_welcome_run_in_the_same_transaction(
    client: AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/users",
        json={"email": "  Ada@Example.COM ", "full_name": " Ada Lovelace "},
        headers={**CLIENT, "X-Request-ID": "req-42"},
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"] == f"/users/{body['id']}"
    assert response.headers["X-Request-ID"] == "req-42"
    assert body["email"] == "Ada@example.com"
    assert body["full_name"] == "Ada Lovelace"
    assert body["is_active"] is True
    run = await db.get(TaskRun, uuid.UUID(body["welcome_run_id"]))
    assert run is not None
    assert run.name == SEND_WELCOME_EMAIL.name
    assert run.kwargs == {"user_id": body["id"]}
    assert run.state == TaskState.QUEUED
    assert run.request_id == "req-42"


async def test_duplicate_email_in_another_case_is_409(client: AsyncClient) -> None:
    await create(client, "ada@example.com")
    response = await client.post(
        "/users", json={"email": "ADA@example.com", "full_name": "Other"}, headers=CLIENT
    )
    assert response.status_code == 409
    assert response.json() == {"detail": "a user with this email already exists"}


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "full_name": "X"},
        {"email": "a@example.com", "full_name": ""},
        {"email": "a@example.com", "full_name": "   "},
        {"email": "a@example.com", "full_name": "x" * 201},
        {"email": "a@example.com", "full_name": "nul\u0000byte"},
        {"email": "a@example.com"},
        {"email": "a@example.com", "full_name": "X", "is_admin": True},
        {"email": 42, "full_name": "X"},
    ],
)
async def test_invalid_input_is_422(client: AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/users", json=body, headers=CLIENT)
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_a_non_ascii_local_part_is_422_unless_the_mail_server_takes_smtputf8(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = await client.post(
        "/users", json={"email": "zoë@exämple.com", "full_name": "Zoë"}, headers=CLIENT
    )
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "email"]
    assert "SMTPUTF8" in error["msg"]
    assert "before the @" in error["msg"]

    monkeypatch.setattr(settings, "smtp_utf8", True)
    accepted = await create(client, "zoë@exämple.com")
    assert accepted["email"] == "zoë@xn--exmple-cua.com"


async def test_sql_looking_and_unicode_names_are_stored_verbatim(client: AsyncClient) -> None:
    name = "Robert'); DROP TABLE users;-- 🎉 Zoë 日本"
    created = await create(client, full_name=name)
    fetched = await client.get(f"/users/{created['id']}", headers=CLIENT)
    assert fetched.json()["full_name"] == name


async def test_read_update_activity_delete(client: AsyncClient, db: AsyncSession) -> None:
    user = await create(client)
    uid = user["id"]
    assert (await client.get(f"/users/{uid}", headers=CLIENT)).json()["email"] == user["email"]

    patched = await client.patch(f"/users/{uid}", json={"is_active": False}, headers=CLIENT)
    assert patched.status_code == 200
    assert patched.json()["is_active"] is False
    assert patched.json()["deactivated_at"] is not None
    renamed = await client.patch(f"/users/{uid}", json={"full_name": "Ada K."}, headers=CLIENT)
    assert renamed.json()["full_name"] == "Ada K."
    assert renamed.json()["is_active"] is False

    assert (await client.post(f"/users/{uid}/activity", headers=CLIENT)).status_code == 204
    seen = (await client.get(f"/users/{uid}", headers=CLIENT)).json()
    assert seen["last_seen_at"] is not None

    assert (await client.delete(f"/users/{uid}", headers=CLIENT)).status_code == 204
    assert (await client.get(f"/users/{uid}", headers=CLIENT)).status_code == 404
    # The user's runs stay in the log.
    assert await db.scalar(select(func.count()).select_from(TaskRun)) == 1


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_unknown_user_is_404(client: AsyncClient, method: str) -> None:
    kwargs = {"json": {"full_name": "X"}} if method == "PATCH" else {}
    response = await client.request(method, "/users/999999", headers=CLIENT, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 404
    assert (await client.post("/users/999999/activity", headers=CLIENT)).status_code == 404


@pytest.mark.parametrize(
    "user_id",
    ["0", "-1", str(2**63), "99999999999999999999", "-" + "9" * 5_000, "abc", "1e3", "0x10", " "],
)
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/activity")]
)
async def test_out_of_range_ids_are_422(
    client: AsyncClient, user_id: str, method: str, suffix: str
) -> None:
    response = await client.request(
        method, f"/users/{user_id}{suffix}", headers=CLIENT, json={"full_name": "X"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


async def test_the_largest_bigint_id_is_a_plain_404(client: AsyncClient) -> None:
    assert (await client.get(f"/users/{2**63 - 1}", headers=CLIENT)).status_code == 404


async def test_list_pages_with_a_keyset_cursor_and_filters(client: AsyncClient) -> None:
    ids = [(await create(client, f"u{i}@example.com"))["id"] for i in range(5)]
    await client.patch(f"/users/{ids[1]}", json={"is_active": False}, headers=CLIENT)

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/users", params=params, headers=CLIENT)).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    inactive = (await client.get("/users?is_active=false", headers=CLIENT)).json()
    assert [u["id"] for u in inactive["items"]] == [ids[1]]


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=-5", "cursor=%%%", "cursor=e30="])
async def test_bad_limits_and_forged_cursors_are_422(client: AsyncClient, query: str) -> None:
    assert (await client.get(f"/users?{query}", headers=CLIENT)).status_code == 422


async def test_concurrent_sign_ups_with_one_email_exactly_one_wins(
    e2e_engine: AsyncEngine,
) -> None:
    """Real concurrent transactions (not the rolled-back session): the database decides."""
    app = create_app()
    sessions = make_sessionmaker(e2e_engine)

    async def own_session():  # type: ignore[no-untyped-def]
        async with sessions() as session:
            yield session

    async with app.router.lifespan_context(app):
        app.dependency_overrides[get_db] = own_session
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/users",
                        json={"email": email, "full_name": "Same"},
                        headers=CLIENT,
                    )
                    for email in ["same@example.com", "SAME@example.com", "Same@Example.com"] * 4
                )
            )
    assert sorted(r.status_code for r in responses) == [201] + [409] * 11
    async with e2e_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(User)) == 1
        assert await conn.scalar(select(func.count()).select_from(TaskRun)) == 1


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"email": "a@example.com", "full_name": "lone \\ud800 surrogate"}', "application/json"),
        (b'{"email": "a@example.com", "full_name": ', "application/json"),
        (b"\xff\xfe not utf-8", "application/json"),
        # What FastAPI alone answers with a 400: not UTF-8, too deep for json, too many digits.
        (b'{"email": "a@example.com", "full_name": "v\xc3"}', "application/json"),
        (b"[" * 5_000 + b"]" * 5_000, "application/json"),
        (b'{"email": "a@example.com", "full_name": ' + b"9" * 5_000 + b"}", "application/json"),
        (b"[]", "application/json"),
    ],
)
async def test_malformed_bodies_are_422(
    client: AsyncClient, content: bytes, content_type: str
) -> None:
    response = await post_bytes(client, "/users", content, content_type, CLIENT)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"email=a@example.com&full_name=X", "application/x-www-form-urlencoded"),
        (b'{"email": "a@example.com", "full_name": "X"}', "text/plain"),
        (b'{"email": "a@example.com", "full_name": "X"}', None),
    ],
)
async def test_a_body_not_sent_as_json_is_415_saying_to_send_json(
    client: AsyncClient, content: bytes, content_type: str | None
) -> None:
    created = await post_bytes(client, "/users", content, content_type, CLIENT)
    assert created.status_code == 415, created.text
    assert created.json() == {"detail": SEND_JSON}
    uid = (await create(client))["id"]
    headers = {**CLIENT, **({"Content-Type": content_type} if content_type else {})}
    patched = await client.patch(f"/users/{uid}", content=b'{"full_name": "Y"}', headers=headers)
    assert patched.status_code == 415, patched.text
    assert "dictionar" not in patched.text


@pytest.mark.parametrize("field", ["full_name", "is_active"])
async def test_patch_with_an_explicit_null_is_422_and_changes_nothing(
    client: AsyncClient, field: str
) -> None:
    user = await create(client)
    response = await client.patch(f"/users/{user['id']}", json={field: None}, headers=CLIENT)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "may be left out, but not null" in error["msg"]
    unchanged = await client.get(f"/users/{user['id']}", headers=CLIENT)
    assert unchanged.json()["full_name"] == user["full_name"]
    assert unchanged.json()["is_active"] is True


async def test_the_openapi_document_declares_415_and_no_nullable_patch_fields(
    client: AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    for path, method in (("/users", "post"), ("/users/{user_id}", "patch"), ("/tasks", "post")):
        assert "415" in document["paths"][path][method]["responses"], (path, method)
    properties = document["components"]["schemas"]["UserUpdateIn"]["properties"]
    assert properties["full_name"]["type"] == "string"
    assert properties["is_active"]["type"] == "boolean"


async def test_bodies_over_64_kib_are_413(client: AsyncClient) -> None:
    big = b'{"email": "a@example.com", "full_name": "' + b"x" * 70_000 + b'"}'
    response = await client.post(
        "/users", content=big, headers={**CLIENT, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 65536 bytes"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
        for _ in range(10):
            yield b"x" * 10_000

    streamed = await client.post("/users", content=chunks(), headers=CLIENT)
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "key", [[2**63], [10**20], [-(10**20)], [-1], [True], [1.5], ["1"], [1, 2], [None], []]
)
async def test_forged_cursors_outside_a_bigint_or_of_the_wrong_shape_are_422(
    client: AsyncClient, key: list[object]
) -> None:
    response = await client.get("/users", params={"cursor": forged_cursor(*key)}, headers=CLIENT)
    assert response.status_code == 422
    assert response.json() == {
        "detail": "invalid cursor: pass next_cursor from a previous page unchanged"
    }


async def test_a_cursor_at_the_ends_of_the_id_range_is_an_empty_or_full_page(
    client: AsyncClient,
) -> None:
    user = await create(client)
    first = await client.get("/users", params={"cursor": forged_cursor(0)}, headers=CLIENT)
    assert [u["id"] for u in first.json()["items"]] == [user["id"]]
    last = await client.get("/users", params={"cursor": forged_cursor(2**63 - 1)}, headers=CLIENT)
    assert last.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("ada@bücher.de", "ada@xn--bcher-kva.de"),  # IDN domain, stored in IDNA
        ("ada@xn--bcher-kva.de", "ada@xn--bcher-kva.de"),  # the same domain in punycode
        ("josé@example.com", "josé@example.com"),  # internationalized local part
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
        ("🎉@example.com", "🎉@example.com"),
        ("e\u0301@example.com", "\u00e9@example.com"),  # decomposed é, stored composed (NFC)
        ("Ada@ÉXAMPLE.COM", "Ada@xn--xample-9ua.com"),  # the domain lowercased, the local part kept
    ],
)
async def test_unicode_emails_are_normalized_and_stored(
    client: AsyncClient, given: str, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "smtp_utf8", True)  # a mail server that takes any of these
    created = await create(client, given)
    assert created["email"] == stored
    fetched = await client.get(f"/users/{created['id']}", headers=CLIENT)
    assert fetched.json()["email"] == stored


async def test_an_idn_domain_and_its_punycode_are_one_email(client: AsyncClient) -> None:
    await create(client, "ada@bücher.de")
    response = await client.post(
        "/users", json={"email": "ada@xn--bcher-kva.de", "full_name": "Ada"}, headers=CLIENT
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    "email",
    [
        "ada@example.com\u200f",  # right-to-left mark
        "ada\u202e@example.com",  # right-to-left override
        "a\u200db@example.com",  # zero-width joiner
        "a\u200bb@example.com",  # zero-width space
        "\ufeffada@example.com",  # byte order mark
        "ada@🎉.com",  # emoji domain
        "ada@example.com\u0000",
        "ada@exam ple.com",
        "ada@example.com'; DROP TABLE users;--",
        '"ada"@example.com',
        "ada@[127.0.0.1]",
        "ada@localhost",
        "a" * 64 + "@" + "b" * 250 + ".com",
        "",
    ],
)
async def test_unsafe_or_invalid_emails_are_422(client: AsyncClient, email: str) -> None:
    response = await client.post(
        "/users", json={"email": email, "full_name": "Ada"}, headers=CLIENT
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]


@pytest.mark.parametrize("unit", ["x", "é", "🎉", "日"])
async def test_a_name_of_200_characters_is_kept_and_201_is_422(
    client: AsyncClient, unit: str
) -> None:
    """Characters, not bytes: 200 emoji are 800 bytes of UTF-8 and still fit."""
    created = await create(client, full_name=unit * 200)
    assert created["full_name"] == unit * 200
    too_long = await client.post(
        "/users", json={"email": "b@example.com", "full_name": unit * 201}, headers=CLIENT
    )
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["type"] == "string_too_long"
    renamed = await client.patch(
        f"/users/{created['id']}", json={"full_name": unit * 201}, headers=CLIENT
    )
    assert renamed.status_code == 422


async def test_a_name_is_trimmed_before_its_length_is_checked(client: AsyncClient) -> None:
    created = await create(client, full_name="  " + "x" * 200 + "\n")
    assert created["full_name"] == "x" * 200


@pytest.mark.parametrize(
    "name",
    [
        "\u05e9\u05dc\u05d5\u05dd\u200f Ada",  # Hebrew with a right-to-left mark
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # one family emoji: zero-width joiners
        "\u0915\u094d\u200d\u0937",  # Devanagari with a zero-width joiner
        "Zoe\u0308",  # a combining diaeresis, not composed for names
        "\u202eevil",  # a bidi override: not a control character, kept as given
        "O'Brien -- \"; SELECT pg_sleep(10); --",
        "%s %(name)s {0} ${x} {{7*7}}",
    ],
)
async def test_unicode_and_format_looking_names_round_trip_verbatim(
    client: AsyncClient, name: str
) -> None:
    created = await create(client, full_name=name)
    assert created["full_name"] == name
    fetched = await client.get(f"/users/{created['id']}", headers=CLIENT)
    assert fetched.json()["full_name"] == name


@pytest.mark.parametrize("path", ["/users", "/tasks"])
@pytest.mark.parametrize(
    "query",
    [
        "limit=99999999999999999999999999",
        "limit=-99999999999999999999999999",
        "limit=1e3",
        "limit=2.5",
        "limit=",
        "limit=NaN",
        "cursor=" + "A" * 513,
    ],
)
async def test_huge_or_malformed_limits_are_422(client: AsyncClient, path: str, query: str) -> None:
    response = await client.get(f"{path}?{query}", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    "given",
    [
        "x" * 129,  # longer than the 128 allowed
        "",
        "has space",
        "new\r\nline",
        "semi;colon",
        "<script>",
        "caf\u00e9",
    ],
)
async def test_an_unusable_request_id_is_replaced_not_echoed(
    client: AsyncClient, db: AsyncSession, given: str
) -> None:
    """The id is echoed into logs and task headers: an unusable one is never passed on."""
    response = await client.post(
        "/users",
        json={"email": "ada@example.com", "full_name": "Ada"},
        headers=[(k.encode(), v.encode()) for k, v in CLIENT.items()]
        + [(b"X-Request-ID", given.encode())],  # bytes: httpx would refuse some as str
    )
    assert response.status_code == 201
    replaced = response.headers["X-Request-ID"]
    assert replaced != given
    assert len(replaced) == 32
    assert int(replaced, 16) >= 0
    run = await db.get(TaskRun, uuid.UUID(response.json()["welcome_run_id"]))
    assert run is not None
    assert run.request_id == replaced


async def test_a_request_id_of_128_safe_characters_is_kept(client: AsyncClient) -> None:
    given = ("Req-1.2_3:" * 13)[:128]
    response = await client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given
