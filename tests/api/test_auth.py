import pytest
from httpx import AsyncClient

from tests.fixtures.api import ADMIN, CLIENT

ADMIN_ROUTES = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("POST", "/tasks/00000000-0000-0000-0000-000000000000/retry"),
    ("GET", "/schedules"),
]
CLIENT_ROUTES = [
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/1"),
    ("PATCH", "/users/1"),
    ("DELETE", "/users/1"),
    ("POST", "/users/1/activity"),
    ("GET", "/tasks/00000000-0000-0000-0000-000000000000"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + CLIENT_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YTpi"}, {"Authorization": ""}],
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
async def test_the_admin_token_may_use_client_routes(
    client: AsyncClient, method: str, path: str
) -> None:
    assert (await client.request(method, path, headers=ADMIN)).status_code not in (401, 403)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
async def test_health_metrics_and_docs_need_no_token(client: AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
