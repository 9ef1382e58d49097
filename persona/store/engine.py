"""The storage engine: one SQLAlchemy Core ``Engine`` with the settings each dialect needs.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` so a committed inbox entry or
audit record survives a power cut, and every transaction opened through :meth:`Store.begin`
starts with ``BEGIN IMMEDIATE``: the write lock is taken up front, so two processes that both
read-then-write serialise on ``busy_timeout`` instead of failing with "database is locked" at
the upgrade (pysqlite's own implicit BEGIN is switched off, following SQLAlchemy's recipe).
Read-only work goes through :meth:`Store.read`, a deferred ``BEGIN`` that never blocks writers.

PostgreSQL (for several instances) gets ``pool_pre_ping`` so a restarted server costs one
reconnect, not an error. Every SQLAlchemy error is converted here, at the boundary, into a
:class:`~persona.errors.StoreError` whose message says what failed, where (the URL with its
password masked) and how to fix it; the password never appears in a message or a log line.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, Connection, Engine, create_engine, event, exc, pool, select
from sqlalchemy.engine import URL, make_url

from persona.errors import ConfigError, StoreError, StoreUnavailable
from persona.private_files import create_private, readable_by_others
from tools.redaction import register_secret, scrub

log = structlog.get_logger(__name__)

Dialect = Literal["sqlite", "postgresql"]

SQLITE_BUSY_TIMEOUT_MS = 15_000
"""How long a writer waits for another process's write lock before giving up."""
PG_CONNECT_TIMEOUT_S = 10
READ_ONLY_OPTION = "persona_read_only"
"""Execution option: on SQLite, open the transaction with a deferred ``BEGIN``."""

_SQLITE_UNAVAILABLE = (
    "unable to open",
    "locked",
    "busy",
    "readonly",
    "read-only",
    "disk",
    "full",
    "not a database",
)


def like_prefix(prefix: str) -> str:
    """A SQL ``LIKE`` pattern for values starting with ``prefix`` (use ``escape="\\\\"``): ``%``, ``_`` literal."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_URL_FIX = (
    "set store.url in config.yaml to sqlite:///path/to/file.sqlite3 or postgresql+psycopg://user@host/db"
)


class Store:
    """An open database: the engine, its dialect, and error conversion at the boundary."""

    def __init__(self, engine: Engine, *, dialect: Dialect, masked_url: str, password: str | None) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect
        self.url = masked_url
        """The URL with its password masked: safe to print."""
        self._password = password
        self._write_lock = threading.Lock() if dialect == "sqlite" else None
        """SQLite has one writer at a time and its busy handler waits by sleeping (up to 100 ms a try):
        threads of this process queue on a lock instead, so each starts the moment the previous commits."""

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (and probe) the database at ``url``; raise :class:`StoreUnavailable` if it cannot be used."""
        parsed = _parse_url(url)
        password = parsed.password if isinstance(parsed.password, str) else None
        register_secret(password)
        masked = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            engine = _sqlite_engine(parsed, masked)
            store = cls(engine, dialect="sqlite", masked_url=masked, password=password)
        else:
            engine = _postgres_engine(parsed)
            store = cls(engine, dialect="postgresql", masked_url=masked, password=password)
        try:
            action = "open the SQLite database" if backend == "sqlite" else "connect to PostgreSQL"
            with store.guard(action), engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except StoreError:
            engine.dispose()
            raise
        log.debug("store_opened", dialect=store.dialect, url=masked)
        return store

    @property
    def shareable(self) -> bool:
        """Whether another process can open this database (not an in-memory SQLite)."""
        return self.dialect != "sqlite" or self.engine.url.database not in (None, "", ":memory:")

    def url_for_another_process(self) -> str:
        """The full URL, password included, for a process of ours that opens the same database (a parallel
        verify's workers): a secret, passed to the process and never printed."""
        return self.engine.url.render_as_string(hide_password=False)

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store(dialect={self.dialect!r}, url={self.url!r})"

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def begin(self, action: str = "write to the database") -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.guard(action), self.engine.begin() as conn:
            yield conn

    def starting(
        self, column: ColumnElement[Any], prefix: str, limit: int, action: str, *where: ColumnElement[bool]
    ) -> list[str]:
        """The distinct values of ``column`` (and ``where``) that start with ``prefix``, taken literally (``%``,
        ``_`` too), in order, at most ``limit``: how an id given by its first characters is found."""
        query = (
            select(column).where(column.like(like_prefix(prefix), escape="\\"), *where)
            .distinct().order_by(column).limit(limit)
        )  # fmt: skip
        with self.read(action) as conn:
            return [str(v) for v in conn.execute(query).scalars()]

    @contextlib.contextmanager
    def read(self, action: str = "read from the database") -> Iterator[Connection]:
        """A read transaction over one consistent snapshot that does not take the write lock."""
        with self.guard(action), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(**{READ_ONLY_OPTION: True})
            else:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    # -- errors ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Convert SQLAlchemy errors raised inside into :class:`StoreError` (``action`` says what failed)."""
        try:
            yield
        except exc.SQLAlchemyError as err:
            raise self.error(err, action) from None

    def error(self, err: BaseException, action: str) -> StoreError:
        """The :class:`StoreError` for ``err``: what failed, where, why (driver text, scrubbed), the fix."""
        detail = self._driver_message(err)
        lowered = detail.lower()
        where = f"[database: {self.url}]"
        unavailable = isinstance(
            err, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError | exc.TimeoutError
        )
        if self.dialect == "sqlite":
            # sqlite3 raises OperationalError for a missing table or bad SQL too: those are bugs.
            unavailable = unavailable and any(m in lowered for m in _SQLITE_UNAVAILABLE)
            fix = _sqlite_fix(lowered)
        elif "password" in lowered or "authentication" in lowered or "role" in lowered:
            fix = "check the user and password in store.url (or the server's pg_hba.conf)"
        elif "does not exist" in lowered and "database" in lowered:
            fix = "create the database (createdb) or correct its name in store.url"
        else:
            fix = "check that PostgreSQL is running and reachable at the host and port in store.url"
        if not unavailable:
            return StoreError(f"cannot {action}: {detail} {where}")
        return StoreUnavailable(f"cannot {action}: {detail} {where} (fix: {fix})")

    def _driver_message(self, err: BaseException) -> str:
        orig = getattr(err, "orig", None) or err
        lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
        # The first line names the problem; later ones (statement, parameters, DETAIL) may hold data.
        text = lines[0] if lines else type(orig).__name__
        if isinstance(err, exc.StatementError) and "[SQL:" in text:
            text = text.split("[SQL:", 1)[0].strip()
        return scrub(text, extra=(self._password,) if self._password else ())


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError):
        raise ConfigError(
            "not a database URL", key="store.url", fix=_URL_FIX
        ) from None  # the text may hold a password: never echo it
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.get_driver_name() not in ("psycopg", "postgresql", "postgres"):
            raise ConfigError(
                f"unsupported PostgreSQL driver {parsed.get_driver_name()!r}", key="store.url", fix=_URL_FIX
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise ConfigError(f"unsupported database {backend!r}", key="store.url", fix=_URL_FIX)
    return parsed


def _sqlite_fix(lowered: str) -> str:
    if "locked" in lowered or "busy" in lowered:
        return "another process holds the write lock; retry, or stop the process that keeps it"
    if "readonly" in lowered or "read-only" in lowered:
        return "make the database file and its directory writable by this user"
    if "full" in lowered:
        return "free disk space"
    return "point store.url at a file in a directory this user can write"


def _sqlite_engine(url: URL, masked: str) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:") or "mode=memory" in database
    kwargs: dict[str, Any] = {}
    if memory:
        # One shared connection, or every checkout would see a new empty database.
        kwargs = {"poolclass": pool.StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        path = Path(database).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            create_private(path)  # mode 0600 before SQLite opens it (its -wal and -shm follow)
        except OSError as err:
            raise StoreUnavailable(
                f"cannot create the SQLite database {path}: {err.strerror or err}"
                f" [database: {masked}] (fix: point store.url at a file in a directory this user can write)"
            ) from None
        if readable_by_others(path):
            log.warning("store_file_readable_by_others", path=str(path), fix=f"chmod 600 {path}*")
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see the module docstring)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {"application_name": "persona"}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def is_conflict(err: BaseException) -> bool:
    """A unique constraint said no (raw, or converted into a StoreError by :meth:`Store.guard`)."""
    cause = err.__cause__ or err.__context__
    if isinstance(err, exc.IntegrityError) or isinstance(cause, exc.IntegrityError):
        return True
    lowered = str(err).lower()
    return "unique" in lowered or "duplicate key" in lowered
