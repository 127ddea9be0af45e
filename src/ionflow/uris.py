"""MongoDB connection strings: one check of their form and one way to show them.

:func:`redact_uri` is the only way a URI is shown anywhere (messages, ``validate --json``,
database descriptions): the password and secret-looking query values become ``***``.
:func:`check_mongo_uri` turns a malformed URI (bad port, an unescaped ``@`` in the
password, no host, ...) into a one-line :class:`~ionflow.errors.UserInputError` that
names the setting and what is expected, and never contains the password.

Light on purpose (no pymongo import): :mod:`ionflow.spec` uses it while validating.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from ionflow.errors import UserInputError, printable

__all__ = ["URI_FORM", "check_mongo_uri", "redact_uri", "uri_problem", "uri_secrets"]

#: What a MongoDB URI looks like (stated in every URI error).
URI_FORM = (
    "mongodb://[user[:password]@]host[:port][,host[:port]...][/database][?options] or "
    "mongodb+srv://[user[:password]@]host[/database][?options]"
)
_SCHEMES = ("mongodb://", "mongodb+srv://")
_SECRET_QUERY_KEYS = ("password", "secret", "token", "authmechanismproperties")
_MAX_SHOWN = 200  # longest URI shown in a message
_NOT_MONGO = "expected a MongoDB connection string starting with 'mongodb://' or 'mongodb+srv://'"


def redact_uri(uri: str) -> str:
    """Return ``uri`` with the password and secret-looking query values masked as ``***``.

    Everything between the first ``:`` after the user name and the *last* ``@`` is the
    password here, so a password with an unescaped ``@``, ``/`` or ``?`` is masked whole
    too (a query value holding an ``@`` is then masked with it: never too little).

    Parameters
    ----------
    uri
        A ``mongodb://`` / ``mongodb+srv://`` connection string.

    Returns
    -------
    str
        A printable form (non-printable characters escaped, at most 200 characters);
        ``"<unparsable MongoDB URI>"`` without a ``scheme://``.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "<unparsable MongoDB URI>"
    head, at, tail = rest.rpartition("@")
    if at:
        user, colon, _password = head.partition(":")
        if "/" in user or "?" in user:  # the '@' is in the path or query, not userinfo
            user, colon, tail = head + at + tail, "", None
        rest = f"{user}:***@{tail}" if colon else (f"{user}@{tail}" if tail is not None else user)
    if "?" in rest:
        rest, query = rest.split("?", 1)
        pairs = [
            (k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        rest += "?" + urlencode(pairs, safe="*:/,")
    return printable(f"{scheme}://{rest}", _MAX_SHOWN)


def uri_secrets(uri: str) -> list[str]:
    """Secret substrings of ``uri`` (the password as written and unescaped, secret query
    values), to scrub from messages of other libraries; the same split as :func:`redact_uri`."""
    from urllib.parse import unquote

    secrets: list[str] = []
    _, _, rest = uri.partition("://")
    head, at, tail = rest.rpartition("@")
    user, colon, password = head.partition(":")
    if at and colon and "/" not in user and "?" not in user:
        secrets += [password, unquote(password)]
    query = (tail if at else rest).split("?", 1)[1] if "?" in (tail if at else rest) else ""
    for k, v in parse_qsl(query, keep_blank_values=True):
        if v and any(s in k.lower() for s in _SECRET_QUERY_KEYS):
            secrets.append(v)
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def _problem(uri: str) -> str | None:
    """What is wrong with ``uri`` (no secret in the text), or None."""
    if not uri.startswith(_SCHEMES):
        return _NOT_MONGO
    if any(ch.isspace() or not ch.isprintable() for ch in uri):
        return "contains whitespace or control characters"
    srv = uri.startswith("mongodb+srv://")
    rest = uri.split("://", 1)[1]
    # the split pymongo makes: options after '?', database after the first '/', the
    # user information before the last '@' of what is left
    host_db = rest.partition("?")[0]
    host_part = host_db.partition("/")[0]
    userinfo, at, hosts = host_part.rpartition("@")
    unescaped = (
        "the user name or password contains an unescaped '@', ':', '/', '?' or '%': "
        "escape them as %XX (urllib.parse.quote_plus; '@' is %40)"
    )
    if at:
        if not userinfo or userinfo.startswith(":"):
            return "empty user name before '@'"
        if (
            "@" in userinfo
            or userinfo.count(":") > 1
            or re.search(r"%(?![0-9A-Fa-f]{2})", userinfo)
        ):
            return unescaped
    if "@" in rest.partition("?")[0] and not at:
        return unescaped  # an '@' after a '/': a '/' in the password
    if not hosts:
        return "no host"
    entries = hosts.split(",")
    if srv and len(entries) != 1:
        return "mongodb+srv:// takes exactly one host name"
    for entry in entries:
        if not entry:
            return "empty host name (an extra ',' in the host list?)"
        if entry.endswith(".sock"):
            continue
        host, port = entry, None
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                return f"IPv6 address {printable(entry, 60)!r} lacks its closing ']'"
            host, after = entry[: close + 1], entry[close + 1 :]
            if after:
                if not after.startswith(":"):
                    return f"unexpected text after the IPv6 address {host!r}"
                port = after[1:]
        elif ":" in entry:
            host, _, port = entry.partition(":")
            if ":" in port:
                return (
                    f"host {printable(entry, 60)!r} has more than one ':' "
                    "(an IPv6 address goes in [brackets])"
                )
        if not host:
            return "empty host name"
        if port is not None:
            if srv:
                return "mongodb+srv:// URIs take no port number"
            if not port.isdigit():
                if not at and "@" in rest:  # 'user:pa?ss@host': the port is the password
                    return unescaped
                return f"port of host {printable(host, 60)!r} must be a whole number 1–65535"
            if not 1 <= int(port) <= 65535:
                return (
                    f"port {int(port) if len(port) < 12 else printable(port, 12)} of host "
                    f"{printable(host, 60)!r} must be 1–65535"
                )
    return None


def uri_problem(uri: str) -> str | None:
    """What is wrong with the form of ``uri``, as ``"<problem>; expected <form>; got
    <uri, password masked>"``, or None when pymongo will accept its form."""
    problem = _problem(uri)
    if problem is None:
        return None
    if uri.startswith(_SCHEMES):
        return f"{problem}; expected {URI_FORM}; got {redact_uri(uri)}"
    # not a MongoDB URI: show its scheme only (the rest may hold a password)
    if "://" in uri:
        shown = printable(uri.partition("://")[0], 20) + "://…"
    else:
        shown = f"a text of {len(uri)} characters without '://'"
    return f"{problem}; got {shown}"


def check_mongo_uri(uri: str, key: str) -> str:
    """Return ``uri`` unchanged if its form is valid, else raise a one-line error.

    Parameters
    ----------
    uri
        The connection string.
    key
        The setting it came from, named in the message (e.g. ``"execution.db_uri"``,
        ``"--uri / IONFLOW_DB_URI"``).

    Raises
    ------
    UserInputError
        ``"<key>: <what is wrong>; expected mongodb://..., got <uri, password masked>"``.
        The password never appears, whatever is wrong.
    """
    problem = uri_problem(uri)
    if problem is None:
        return uri
    raise UserInputError(f"{key}: {problem}")
