"""The root of every domain error. Domain errors know nothing about HTTP: the API maps them to
status codes in one place (api/errors.py), and the worker decides per class whether to retry."""


class DomainError(Exception):
    """Something the caller asked for cannot be done; the message says why."""


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class InvalidInput(DomainError):
    pass
