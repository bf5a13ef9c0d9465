from collections import defaultdict
from typing import Any

import pytest
from httpx import AsyncClient

from api.main import create_app
from tests.fixtures.api import ADMIN, CLIENT

PATH_PARAMS = {"user_id": "1", "run_id": "00000000-0000-0000-0000-000000000000"}
# Only public routes are listed by hand: a route is public because someone wrote it here. Every
# other operation must declare the bearer scheme; those that also declare 403 are admin routes.
# The requests below check that each route answers as it declares, so a new route needs no line
# here unless it is public.
PUBLIC_TEMPLATES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of the schema the app serves, by (METHOD, path template)."""
    schema = create_app().openapi()
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


OPERATIONS = _operations()
ADMIN_TEMPLATES = sorted(r for r, op in OPERATIONS.items() if "403" in op["responses"])
CLIENT_TEMPLATES = sorted(set(OPERATIONS) - set(ADMIN_TEMPLATES) - set(PUBLIC_TEMPLATES))


def _concrete(templates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Paths to request; a parameter of a new name gets "1" (auth answers before validation)."""
    return [
        (method, path.format_map(defaultdict(lambda: "1", PATH_PARAMS)))
        for method, path in templates
    ]


ADMIN_ROUTES = _concrete(ADMIN_TEMPLATES)
CLIENT_ROUTES = _concrete(CLIENT_TEMPLATES)


def test_routes_are_sorted_by_what_they_declare() -> None:
    """The split above finds the routes it should (it is not empty by mistake)."""
    assert {("POST", "/tasks"), ("GET", "/task-types"), ("GET", "/schedules")} <= set(
        ADMIN_TEMPLATES
    )
    assert {("POST", "/users"), ("GET", "/tasks/{run_id}")} <= set(CLIENT_TEMPLATES)
    assert set(PUBLIC_TEMPLATES) <= set(OPERATIONS)


def test_every_route_not_listed_public_declares_the_bearer_scheme_and_401() -> None:
    for route, operation in OPERATIONS.items():
        if route in PUBLIC_TEMPLATES:
            assert "security" not in operation, route
            continue
        assert operation["security"] == [{"HTTPBearer": []}], route
        assert "401" in operation["responses"], route


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + CLIENT_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic YTpi"},
        {"Authorization": ""},
        {"Authorization": ADMIN["Authorization"] + "x"},  # a token that starts like the admin's
        {"Authorization": ADMIN["Authorization"][:-1]},  # and a prefix of it
        {"Authorization": "Bearer " + "x" * 8_000},
        {"Authorization": ADMIN["Authorization"].removeprefix("Bearer ")},  # no scheme
    ],
)
async def test_missing_or_wrong_token_is_401_with_a_challenge(
    client: AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_a_client_token_on_an_admin_route_is_403(
    client: AsyncClient, method: str, path: str
) -> None:
    assert (await client.request(method, path, headers=CLIENT)).status_code == 403


@pytest.mark.parametrize(("method", "path"), CLIENT_ROUTES)
@pytest.mark.parametrize("token", [ADMIN, CLIENT], ids=["admin", "client"])
async def test_both_tokens_may_use_client_routes(
    client: AsyncClient, method: str, path: str, token: dict[str, str]
) -> None:
    assert (await client.request(method, path, headers=token)).status_code not in (401, 403)


@pytest.mark.parametrize(
    "path", [path for _, path in PUBLIC_TEMPLATES] + ["/docs", "/openapi.json"]
)
async def test_health_metrics_and_docs_need_no_token(client: AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
