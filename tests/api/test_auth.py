import pytest
from httpx import AsyncClient

from api.main import create_app
from tests.fixtures.api import ADMIN, CLIENT

# Route templates as the OpenAPI schema names them. Every operation must be in exactly one
# list (a test reads the schema), so a new route cannot be left out of these checks.
ADMIN_TEMPLATES = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("POST", "/tasks/{run_id}/retry"),
    ("GET", "/schedules"),
    ("GET", "/task-types"),
]
CLIENT_TEMPLATES = [
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/{user_id}"),
    ("PATCH", "/users/{user_id}"),
    ("DELETE", "/users/{user_id}"),
    ("POST", "/users/{user_id}/activity"),
    ("GET", "/tasks/{run_id}"),
]
PUBLIC_TEMPLATES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
PATH_PARAMS = {"user_id": "1", "run_id": "00000000-0000-0000-0000-000000000000"}


def _concrete(templates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(method, path.format(**PATH_PARAMS)) for method, path in templates]


ADMIN_ROUTES = _concrete(ADMIN_TEMPLATES)
CLIENT_ROUTES = _concrete(CLIENT_TEMPLATES)


def _operations() -> dict[tuple[str, str], dict[str, object]]:
    """Every operation of the schema the app serves, by (METHOD, path template)."""
    schema = create_app().openapi()
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def test_every_operation_in_the_schema_is_listed_here_once() -> None:
    listed = ADMIN_TEMPLATES + CLIENT_TEMPLATES + PUBLIC_TEMPLATES
    assert len(set(listed)) == len(listed)
    assert set(_operations()) == set(listed)


def test_token_routes_declare_the_bearer_scheme_and_401_and_only_admin_routes_403() -> None:
    for route, operation in _operations().items():
        responses = operation["responses"]
        assert isinstance(responses, dict)
        if route in PUBLIC_TEMPLATES:
            assert "security" not in operation, route
            continue
        assert operation["security"] == [{"HTTPBearer": []}], route
        assert "401" in responses, route
        assert ("403" in responses) == (route in ADMIN_TEMPLATES), route


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
