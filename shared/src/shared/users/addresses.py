"""Email addresses in the one form that is stored, compared and mailed.

The domain is kept in its IDNA form (`zoe@xn--exmple-cua.com` for `zoe@exämple.com`), lower
case: every mail server takes it, and an address typed with the Unicode or the ASCII domain is
the same user (the unique index is on `lower(email)`). The local part (before the @) is kept as
typed, NFC-normalized: only the receiving server may interpret it. A local part that is not
ASCII can be delivered only through a server that offers SMTPUTF8, so it is accepted only when
the setting SMTP_UTF8 says the mail server does.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


class AddressRefused(ValueError):
    """The address is malformed, or cannot be delivered by this deployment's mail server."""


NEEDS_SMTPUTF8 = (
    "the part before the @ has non-ASCII characters, which this service's mail server cannot "
    "deliver (it does not offer SMTPUTF8); the domain may be non-ASCII"
)


def stored_address(value: str, *, smtputf8: bool) -> str:
    """The address to store for `value`, or AddressRefused saying why there is none.
    No DNS lookups: whether the domain takes mail is the mail server's business."""
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise AddressRefused(str(exc)) from None
    if checked.smtputf8 and not smtputf8:
        raise AddressRefused(NEEDS_SMTPUTF8)
    return f"{checked.local_part}@{checked.ascii_domain}"


def smtp_address(stored: str) -> str:
    """The recipient to hand the mail server. Rows written before domains were stored as IDNA
    may hold a Unicode domain: convert it here, so their runs succeed when retried. An ASCII
    address needs no conversion: it skips the validation, 2% of a welcome email's worker CPU."""
    if stored.isascii():
        return stored
    try:
        return stored_address(stored, smtputf8=True)
    except AddressRefused:
        return stored  # the server will say what is wrong with it
