"""The URL of the Redis server an asyncio client talks to, for the actor system's own (blocking) connection.

``MessageQueue(redis=client)`` persists through the actor system's RedisPersistence actor, which uses the
synchronous redis-py client and is configured by URL. :func:`url_of_client` rebuilds that URL from the
client's connection pool: scheme (``redis``, ``rediss`` for TLS, ``unix`` for a socket path), host and port
or socket path, database, username and password, and the TLS options redis-py reads from a URL's query.
Settings it cannot carry over (a credential provider, a Sentinel or custom connection class, TLS verify
flags, DER CA data) raise :class:`~protocol.errors.InvalidSettings` naming them, rather than connecting the
actor system somewhere else or differently.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote, urlencode

from protocol.errors import InvalidSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

# TLS options copied into the URL's query as they are (redis-py's parse_url passes them on as strings,
# or converts them back: ssl_check_hostname to a bool, ssl_min_version to an int).
_SSL_TEXT_OPTIONS = ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_ca_path", "ssl_ciphers", "ssl_password")
_VERIFY_MODES = {ssl.CERT_NONE: "none", ssl.CERT_OPTIONAL: "optional", ssl.CERT_REQUIRED: "required"}


def url_of_client(client: Redis) -> str:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL reaching the server ``client`` is configured for.

    Raises:
        InvalidSettings: if ``client`` is not a ``redis.asyncio.Redis`` on a plain, TLS or Unix socket
            connection pool, or uses a setting a URL cannot carry (naming it).
    """
    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

    pool = getattr(client, "connection_pool", None)
    kind = getattr(pool, "connection_class", None)
    raw = getattr(pool, "connection_kwargs", None)
    if pool is None or kind is None or not isinstance(raw, Mapping):
        raise InvalidSettings(
            f"redis must be a redis.asyncio.Redis client with a connection pool, got {type(client).__name__}"
        )
    kwargs: Mapping[str, Any] = raw
    if kwargs.get("credential_provider") is not None:
        raise InvalidSettings(
            "cannot persist through a Redis client that uses a credential_provider: the actor system connects "
            "on its own with a URL; give the client username= and password= instead"
        )
    userinfo = _userinfo(kwargs)
    db = int(kwargs.get("db") or 0)
    if kind is UnixDomainSocketConnection:
        path = str(kwargs.get("path") or "")
        if not path:
            raise InvalidSettings("the Redis client's Unix socket connection has no path")
        return f"unix://{userinfo}{quote(path)}?{urlencode({'db': db})}"
    if kind is not Connection and kind is not SSLConnection:
        raise InvalidSettings(
            f"cannot persist through a Redis client whose connection class is {kind.__module__}.{kind.__name__} "
            "(Sentinel, cluster or custom connections): give MessageQueue a client for one server, made with "
            "host/port, unix_socket_path or redis.asyncio.Redis.from_url"
        )
    host = str(kwargs.get("host") or "localhost")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = int(kwargs.get("port") or 6379)
    scheme = "redis"
    query = ""
    if kind is SSLConnection:
        scheme = "rediss"
        query = _ssl_query(kwargs)
    return f"{scheme}://{userinfo}{host}:{port}/{db}{query}"


def _userinfo(kwargs: Mapping[str, Any]) -> str:
    username = kwargs.get("username")
    password = kwargs.get("password")
    if not username and not password:
        return ""
    user = quote(str(username or ""), safe="")
    return f"{user}:{quote(str(password), safe='')}@" if password else f"{user}@"


def _ssl_query(kwargs: Mapping[str, Any]) -> str:
    for name in ("ssl_include_verify_flags", "ssl_exclude_verify_flags"):
        if kwargs.get(name):
            raise InvalidSettings(f"cannot carry the Redis client's {name} over to the actor system's connection")
    options: dict[str, str] = {}
    cert_reqs = kwargs.get("ssl_cert_reqs", "required")
    if isinstance(cert_reqs, ssl.VerifyMode):
        cert_reqs = _VERIFY_MODES[cert_reqs]
    if cert_reqs is None:
        cert_reqs = "none"
    options["ssl_cert_reqs"] = str(cert_reqs)
    options["ssl_check_hostname"] = "true" if kwargs.get("ssl_check_hostname", True) else "false"
    for name in _SSL_TEXT_OPTIONS:
        value = kwargs.get(name)
        if value is not None:
            options[name] = str(value)
    ca_data = kwargs.get("ssl_ca_data")
    if ca_data is not None:
        if not isinstance(ca_data, str):
            raise InvalidSettings("cannot carry the Redis client's DER ssl_ca_data over; give PEM text or a file")
        options["ssl_ca_data"] = ca_data
    min_version = kwargs.get("ssl_min_version")
    if min_version is not None:
        options["ssl_min_version"] = str(int(min_version))
    return "?" + urlencode(options)
