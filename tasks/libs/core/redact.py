"""Masking secrets for output: one function for free text, one for a URI."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# scheme://user:password@ anywhere in a text (a URI inside a log line or an error message).
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@\s]+)@")


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """text with every scheme://user:password@ masked and every known secret replaced by ***.

    Each secret is also masked in its URL-quoted and unquoted forms, as it may appear in a URI.
    """
    text = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""), unquote(secret))}
    for form in sorted(forms, key=len, reverse=True):  # longest first: a secret may contain another
        text = text.replace(form, "***")
    return text


def mask_uri(uri: str) -> str:
    """The URI with its password shown as ***; text that is no URI is redacted as text."""
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return redact(uri)
