from shared.errors import Conflict, InvalidInput, NotFound


class RunNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("task run not found")


class UnknownTask(InvalidInput):
    def __init__(self, name: str) -> None:
        super().__init__(f"no task named {name!r} can be enqueued")


class RunNotRetryable(Conflict):
    pass


class IdempotencyKeyReused(Conflict):
    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used for a different request")
