from shared.contracts import CONTRACTS
from worker.celery_app import app


def test_every_contract_has_exactly_one_worker_task_and_back() -> None:
    app.loader.import_default_modules()  # runs the autodiscovery of worker/<domain>/tasks.py
    # celery.* are Celery's own; tests.* exist only in test workers (tests/worker/probe_tasks.py).
    implemented = {name for name in app.tasks if not name.startswith(("celery.", "tests."))}
    assert implemented == set(CONTRACTS)


def test_task_names_are_domain_verb_object_not_module_paths() -> None:
    for name in CONTRACTS:
        domain, _, action = name.partition(".")
        assert domain.isidentifier()
        assert action.isidentifier()
        assert not name.startswith(("worker.", "shared.", "api."))
