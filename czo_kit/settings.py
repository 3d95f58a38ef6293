"""Settings of a kit, validated with msgspec, read from ``CZO_*`` environment variables.

A bad value is a ``ConfigurationError`` that names the variable, the value and what is allowed.
The defaults need no server at all: SQLite in the working directory.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from czo_kit.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "Settings", "read_settings", "redact_url", "secret_fields"]

ENV_PREFIX = "CZO_"

log = logging.getLogger(__name__)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

# Variables with the CZO_ prefix that are read by something other than Settings (test
# configuration, tools), so an unknown-variable warning does not fire for them.
_FOREIGN_VARIABLES = frozenset({"CZO_TEST_DATABASE_URL", "CZO_TEST_REDIS_URL"})

_validating = threading.local()

# Values echoed in an error are cut to this many characters, so that a hostile or mistaken
# multi-megabyte variable does not flood a log.
_SHOWN_CHARS = 80

PoolSize = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Configuration of one kit. Each field is read from ``CZO_<FIELD NAME IN CAPITALS>``.

    Build it with ``Settings.from_env()`` or ``Settings(field=value, ...)``; both validate.
    """

    database_url: str = "sqlite:///czo.sqlite3"
    """Where the data lives: ``sqlite:///path.db`` (embedded default) or
    ``postgresql://user:password@host:port/dbname``. Plugins can add schemes."""

    db_pool_size: PoolSize = 10
    """Most connections a pooled backend (PostgreSQL) keeps open."""

    db_pool_timeout: Seconds = 10.0
    """Seconds a thread waits for a free pooled connection before failing."""

    db_stale_timeout: Seconds = 300.0
    """Seconds after which an idle pooled connection is closed rather than reused."""

    cache_url: str = "memory://"
    """Where the cache lives: ``memory://`` (in-process, development) or
    ``redis://[:password@]host:6379/0`` (production). Plugins can add schemes."""

    cache_prefix: str = "czo:"
    """Prefix of every cache key, so several installations can share one Redis."""

    cache_default_ttl: Seconds = 300.0
    """Seconds a cached value stays fresh when the caller gives no TTL."""

    cache_timeout: Seconds = 0.25
    """Seconds to wait for the cache server before treating a call as a miss."""

    cache_lock_timeout: Seconds = 10.0
    """Lease, in seconds, of the lock that lets one process compute a cold key."""

    cache_max_entries: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 10_000
    """Most entries the memory cache keeps (least recently used go first)."""

    cache_near_entries: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 10_000
    """Most values the Redis cache driver keeps in this process (a near cache that Redis key
    tracking keeps exact; needs Redis 6+). 0 turns it off: every read goes to Redis."""

    cache_strict: bool = False
    """Raise when the cache server is unreachable, instead of degrading to misses."""

    queue_url: str = "sqlite:///czo-queue.sqlite3"
    """Where async events wait for a worker: ``sqlite:///path`` (embedded default) or
    ``redis://host:6379/0``. Empty: no queue, ``emit_async`` runs handlers in-process."""

    queue_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,64}\Z")] = "czo"
    """Name of the Huey queue: letters, digits and '_' (Huey drops other characters from its
    Redis keys, so 'a-b' and 'ab' would share a queue). Installations sharing one Redis need
    different names."""

    events_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    """Retries of a failing async handler before its delivery is dead-lettered."""

    events_retry_base: Seconds = 2.0
    """Seconds before the first retry; doubled at each retry, with jitter."""

    events_retry_max: Seconds = 3600.0
    """Longest wait between two retries of an async delivery."""

    events_lease: Seconds = 300.0
    """Seconds an async handler may run before its delivery is presumed lost and re-run."""

    events_dispatch_batch: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    """Most committed async events the relay hands to the queue in one dispatch task; a worker
    dispatches them and runs their quick handlers in that task. ``1``: one task per event, the
    only kind workers older than the batch task run (set it during a rolling deploy from such
    a release, until every worker runs this one)."""

    events_sweep_interval: Seconds = 30.0
    """Seconds between two sweeps for events a crash left behind."""

    events_shutdown_timeout: Seconds = 3.0
    """Seconds ``kit.close()`` (or a process exit) waits for the queue to take the async events
    the relay still holds; the rest stay pending in the outbox, and the sweep queues them."""

    events_retention: Annotated[float, msgspec.Meta(gt=0, le=10 * 366 * 86400)] = 604800.0
    """Seconds that delivered async events, their finished delivery records, replayed or
    discarded dead letters and idempotency markers are kept (default 7 days); then the worker
    deletes them in small batches at its sweeps (``czo-kit events prune`` does it by hand).
    Dead letters neither replayed nor discarded are kept whatever their age."""

    events_strict: bool = False
    """``emit`` raises handler errors (after running every handler) instead of logging them."""

    apps_allow_private_urls: bool = False
    """Let app URLs (manifest, webhooks, token target) reach loopback, private and link-local
    addresses. Only for local development, tests and the demo."""

    webhooks_retry_schedule: Annotated[
        tuple[Annotated[float, msgspec.Meta(gt=0, le=86400)], ...], msgspec.Meta(min_length=1, max_length=50)
    ] = (10.0, 60.0, 300.0, 1800.0, 3600.0, 7200.0, 14400.0)
    """Seconds before each webhook retry (comma-separated); attempts = retries + 1."""

    webhooks_lease: Seconds = 120.0
    """Seconds a webhook attempt may take before the sweep assumes its worker died."""

    webhooks_breaker_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    """Consecutive failures of one target after which its deliveries are paused."""

    webhooks_breaker_cooldown: Seconds = 60.0
    """Seconds a failing target is paused before one probe delivery is tried."""

    webhooks_timeout: Seconds = 10.0
    """Seconds to wait for a webhook target's answer (connecting: at most 2 s)."""

    dashboard_session_lifetime: Annotated[float, msgspec.Meta(ge=60, le=30 * 86400)] = 28800.0
    """Seconds a dashboard sign-in lasts (from 60 seconds to 30 days), counted from the
    sign-in, not from the last page seen: then the person signs in again."""

    webhooks_retention: Annotated[float, msgspec.Meta(gt=0, le=3660 * 86400)] = 604800.0
    """Seconds (7 days by default) a delivered webhook delivery and its attempts are kept; then
    the worker's sweep deletes them in small batches (``czo-kit webhooks prune`` too). Dead
    deliveries stay until redelivered or discarded (``czo-kit webhooks discard``)."""

    secret_key: str | None = None
    """Signs pagination cursors (and later tokens). At least 32 characters. When unset, a
    random key is made per process, so cursors do not survive a restart."""

    plugins: tuple[str, ...] | None = None
    """Allow-list of installed (entry-point) plugins to load, comma-separated. Unset loads
    every installed plugin; an empty value loads none. Built-in plugins always load unless
    blocked by ``disable_plugins``."""

    disable_plugins: tuple[str, ...] = ()
    """Block-list of plugins, built-in or installed, comma-separated."""

    log_format: Literal["text", "json"] = "text"
    """Lines of the CLI's log: ``text``, or ``json`` (one object per line, with the event id,
    correlation id and actor when known)."""

    metrics: bool = True
    """Record Prometheus metrics and serve them at ``/metrics`` (``czo-kit serve``, and the
    worker with ``--metrics-port``). False records nothing and serves no ``/metrics``."""

    metrics_sample: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 32
    """Time one call in this many of the fast paths (``emit``, ``emit_async``, cache reads) for
    their latency histograms; 1 times every call. Counters count every call regardless."""

    metrics_dir: str = ""
    """Multiprocess mode: a directory shared by the processes of one service (several ``czo-kit
    serve`` processes, say), where each writes its numbers every second and whose endpoint sums
    them. Empty: ``PROMETHEUS_MULTIPROC_DIR`` if set, else none (a ``-k process`` worker makes
    a private one on its own)."""

    metrics_host: str = "127.0.0.1"
    """Interface the worker's metrics endpoint listens on."""

    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """Port of the worker's metrics endpoint (``czo-kit worker``, and ``huey_consumer
    czo_kit.worker.huey``); 0 picks a free one; unset serves none."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    """Level of the logging the CLI sets up (``--log-level`` wins); a program embedding the
    kit configures logging itself."""

    # Settings that hold secrets: never printed, logged or shown in a repr.
    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"secret_key"})

    def __post_init__(self) -> None:
        # msgspec does not validate keyword construction; do it here so that
        # Settings(db_pool_size="x") fails as loudly as the environment would.
        # Lists given for tuple fields become tuples, so Settings stays hashable and frozen.
        for name in ("plugins", "disable_plugins"):
            value = getattr(self, name)
            if isinstance(value, list):
                msgspec.structs.force_setattr(self, name, tuple(value))
        if getattr(_validating, "active", False):
            return
        _validating.active = True
        try:
            data = msgspec.structs.asdict(self)
            try:
                msgspec.convert(data, type(self), strict=True)
            except msgspec.ValidationError as exc:
                field, message = _split_error(exc)
                raise ConfigurationError(
                    f"invalid setting {field}={_clip(_show(field, data.get(field)))}: "
                    f"{_explain(type(self), field, message)}",
                    variable=_env_name(field),
                ) from None
        finally:
            _validating.active = False
        _check_semantics(self, naming=lambda f: f)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={_show(name, getattr(self, name))}" for name in self.__struct_fields__
        )
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``CZO_*`` variables; ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        _warn_unknown(cls, env)
        settings = read_settings(cls, prefix=ENV_PREFIX, environ=env, overrides=overrides)
        _check_semantics(settings, naming=_env_name)
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like the original)."""
        return msgspec.structs.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """Every setting, secrets and URL passwords masked: safe to print or log."""
        return {
            name: (
                "***"
                if name in self.SECRET_FIELDS and value
                else redact_url(value) if isinstance(value, str) else value
            )
            for name, value in msgspec.structs.asdict(self).items()
        }


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not parseable as a URL (an unclosed IPv6 bracket, ...)
        password = None
    if password:
        return url.replace(f":{password}@", ":***@", 1)
    # Malformed URLs (postgresql//user:pw@host) have no parsed password; mask the pattern.
    return re.sub(r"(?<=:)[^:/@\s]+(?=@)", "***", url)


S = TypeVar("S", bound=msgspec.Struct)

# Field names that hold secrets in a plugin's settings, masked even where the Struct's
# SECRET_FIELDS forgets them.
_SECRET_NAME = re.compile(r"secret|password|passwd|token|api_key|private_key")


def secret_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of a settings Struct never shown: its ``SECRET_FIELDS``, and any field
    whose name says it holds a secret."""
    declared = frozenset(getattr(kind, "SECRET_FIELDS", ()))
    return declared | frozenset(name for name in kind.__struct_fields__ if _SECRET_NAME.search(name))


def read_settings(
    kind: type[S],
    *,
    prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """A settings Struct read from ``<prefix><FIELD>`` variables, the way the kit reads its
    own: booleans and comma-separated lists as the environment writes them, every default
    from the Struct, and a bad value a ``ConfigurationError`` naming the variable, the value
    (secrets masked) and what is allowed."""
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    hints = _field_types(kind)
    data: dict[str, Any] = {}
    for name in kind.__struct_fields__:
        variable = _env_name(name, prefix)
        if variable in env:
            data[name] = _parse_raw(hints[name], env[variable])
    unknown = sorted(set(overrides) - set(kind.__struct_fields__))
    if unknown:
        close = difflib.get_close_matches(unknown[0], kind.__struct_fields__, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"{kind.__name__}: unknown setting(s) {', '.join(map(repr, unknown))}{hint} "
            f"(settings: {', '.join(kind.__struct_fields__)})"
        )
    data.update(overrides)
    _validating.active = True
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        field, message = _split_error(exc)
        # Show what the caller gave: the override if there is one, else the raw variable.
        raw = overrides[field] if field in overrides else env.get(_env_name(field, prefix))
        shown = "'***'" if field in secret_fields(kind) and raw else _clip(_show(field, raw))
        raise ConfigurationError(
            f"invalid setting {_env_name(field, prefix)}={shown}: {_explain(kind, field, message)}",
            variable=_env_name(field, prefix),
        ) from None
    finally:
        _validating.active = False


def unknown_variables(kind: type[msgspec.Struct], prefix: str, environ: Mapping[str, str]) -> list[str]:
    """Variables under ``prefix`` that name no field of ``kind``, each with a close match."""
    known = {_env_name(name, prefix) for name in kind.__struct_fields__}
    found = []
    for variable in sorted(environ):
        if variable.startswith(prefix) and variable not in known:
            close = difflib.get_close_matches(variable, sorted(known), n=1, cutoff=0.8)
            found.append(f"{variable} (did you mean {close[0]}?)" if close else variable)
    return found


def _env_name(field: str, prefix: str = ENV_PREFIX) -> str:
    return prefix + field.upper()


def _show(field: str, value: Any) -> str:
    if field in Settings.SECRET_FIELDS and value:
        return "'***'"
    return repr(redact_url(value) if isinstance(value, str) else value)


def _clip(text: str) -> str:
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f.type for f in info.fields}


def _parse_raw(kind: msgspec.inspect.Type, raw: str) -> Any:
    """Turn an environment string into the shape msgspec expects for ``kind``."""
    base = kind
    if isinstance(base, msgspec.inspect.UnionType):
        non_none = [t for t in base.types if not isinstance(t, msgspec.inspect.NoneType)]
        base = non_none[0] if len(non_none) == 1 else base
    if isinstance(base, msgspec.inspect.BoolType):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        return raw  # left for msgspec to reject with the standard message
    if isinstance(base, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw.strip()


def _split_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    text = str(exc)
    message, sep, path = text.rpartition(" - at `$.")
    if not sep:
        return "?", text
    field = path.rstrip("`").split("[", 1)[0].split(".", 1)[0]
    return field, message


def _number(kind: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> str:
    noun = "an integer" if isinstance(kind, msgspec.inspect.IntType) else "a number"
    bounds = [
        f"{op} {bound:g}"
        for op, bound in ((">", kind.gt), (">=", kind.ge), ("<", kind.lt), ("<=", kind.le))
        if bound is not None
    ]
    return f"{noun}{' ' + ' and '.join(bounds) if bounds else ''}"


def _explain(cls: type[msgspec.Struct], field: str, message: str) -> str:
    """msgspec's message, or where it names only a type ("Expected `float`, got `str`"), what
    the variable may hold, in the form it takes in the environment."""
    kind = _field_types(cls).get(field)
    if isinstance(kind, msgspec.inspect.UnionType):
        non_none = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        kind = non_none[0] if len(non_none) == 1 else kind
    if isinstance(kind, msgspec.inspect.LiteralType):
        allowed = ", ".join(str(v) for v in kind.values)
        return f"{message.rstrip('.')}; allowed: {allowed}"
    if isinstance(kind, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        # msgspec says "Expected `int`, got `str`" for "x" and "Expected `int` >= 1" for "0";
        # one sentence naming the whole allowed range serves both.
        return f"expected {_number(kind)}"
    if isinstance(kind, msgspec.inspect.BoolType):
        return "expected true or false (also yes/no, on/off, 1/0; empty is false)"
    if isinstance(kind, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)) and isinstance(
        kind.item_type, (msgspec.inspect.IntType, msgspec.inspect.FloatType)
    ):
        what = _number(kind.item_type)
        count = ""
        if kind.min_length is not None or kind.max_length is not None:
            count = f", {kind.min_length or 0} to {kind.max_length if kind.max_length is not None else 'any number'} of them"
        return f"expected a comma-separated list, each item {what}{count}"
    return message


def _check_semantics(settings: Settings, *, naming: Any) -> None:
    url = settings.database_url
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # an unclosed IPv6 bracket and the like
        scheme = ""
    if not scheme or "://" not in url:
        raise ConfigurationError(
            f"invalid setting {naming('database_url')}={_clip(_show('database_url', url))}: "
            "expected a URL such as "
            "'sqlite:///czo.sqlite3' or 'postgresql://user@host:5432/dbname'",
            variable=_env_name("database_url"),
        )
    queue_url = settings.queue_url
    if queue_url and "://" not in queue_url:
        raise ConfigurationError(
            f"invalid setting {naming('queue_url')}={_clip(_show('queue_url', queue_url))}: "
            "expected a URL such as 'sqlite:///czo-queue.sqlite3' or 'redis://127.0.0.1:6379/0', "
            "or an empty value for no queue",
            variable=_env_name("queue_url"),
        )
    cache_url = settings.cache_url
    if "://" not in cache_url:
        raise ConfigurationError(
            f"invalid setting {naming('cache_url')}={_clip(_show('cache_url', cache_url))}: "
            "expected a URL such as 'memory://' or 'redis://127.0.0.1:6379/0'",
            variable=_env_name("cache_url"),
        )
    key = settings.secret_key
    if key is not None and len(key) < 32:
        raise ConfigurationError(
            f"invalid setting {naming('secret_key')}: it must be at least 32 characters "
            f"long (got {len(key)}); generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
            variable=_env_name("secret_key"),
        )


def _warn_unknown(cls: type[Settings], env: Mapping[str, str]) -> None:
    known = {_env_name(name) for name in cls.__struct_fields__}
    for variable in env:
        if not variable.startswith(ENV_PREFIX) or variable in known:
            continue
        if variable in _FOREIGN_VARIABLES:
            continue
        close = difflib.get_close_matches(variable, sorted(known), n=1, cutoff=0.85)
        if close:
            log.warning("unknown setting %s is ignored; did you mean %s?", variable, close[0])
