from httpx import AsyncClient

from tests.fixtures.api import CLIENT


async def test_readyz_reports_each_dependency(client: AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "up", "broker": "up"}


async def test_metrics_count_requests_by_route_template(client: AsyncClient) -> None:
    def count(text: str) -> float:
        line = 'http_requests_total{method="GET",route="/users/{user_id}",status="404"}'
        found = [row.split()[-1] for row in text.splitlines() if row.startswith(line)]
        return float(found[0]) if found else 0.0

    before = count((await client.get("/metrics")).text)
    for user_id in (990001, 990002, 990003):
        await client.get(f"/users/{user_id}", headers=CLIENT)
    text = (await client.get("/metrics")).text
    assert count(text) == before + 3
    assert "http_request_duration_seconds_bucket" in text
    assert "outbox_unpublished_runs" in text


async def test_request_id_is_made_when_missing_and_refused_when_unsafe(
    client: AsyncClient,
) -> None:
    made = (await client.get("/healthz")).headers["X-Request-ID"]
    assert len(made) == 32
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert unsafe.headers["X-Request-ID"] != "a b\tc"


async def test_documentation_pages_are_counted_under_their_own_route(client: AsyncClient) -> None:
    def count(text: str, route: str) -> float:
        line = f'http_requests_total{{method="GET",route="{route}",status='
        return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))

    before = (await client.get("/metrics")).text
    for path in ("/docs", "/openapi.json", "/redoc", "/no-such-page"):
        await client.get(path)
    after = (await client.get("/metrics")).text
    for route in ("/docs", "/openapi.json", "/redoc", "unmatched"):
        assert count(after, route) == count(before, route) + 1, route
