"""The listening socket of ``persona serve`` and ``persona sandbox``, bound before anything is printed.

Binding first turns a port in use into one line naming the port and the fix, instead of a success banner
followed by uvicorn's traceback; the bound socket is handed to uvicorn, so nothing can take the port between
the check and the serving.
"""

from __future__ import annotations

import errno
import socket

from persona.errors import ConfigError


def listen(host: str, port: int, *, key: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; a :class:`ConfigError` (naming ``key``) if it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(
            f"cannot listen on {host}:{port}: the address does not resolve ({err.strerror})", key=key,
            fix="give an interface address such as 127.0.0.1 or 0.0.0.0",
        ) from None  # fmt: skip
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            reason, fix = (
                "the port is in use",
                f"stop what listens there (`ss -ltnp 'sport = :{port}'`), or choose another port",
            )
        elif err.errno == errno.EACCES:
            reason, fix = (
                "permission denied",
                "use a port above 1023, or run with the right to bind low ports",
            )
        else:
            reason, fix = err.strerror or str(err), "give an address of this machine"
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}", key=key, fix=fix) from None
    sock.set_inheritable(True)
    return sock


__all__ = ["listen"]
