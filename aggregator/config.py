"""Configuration: frozen dataclasses loaded from TOML and validated once, at startup."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aggregator.errors import ConfigError

DEFAULT_CONFIG_PATH: Final = Path("config/aggregator.toml")
DATABASE_URL_ENV: Final = "AGGREGATOR_DATABASE_URL"

UPSTREAM_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
KINDS: Final = ("trs", "static", "aggregator")
MODES: Final = ("mirror", "index")
CHANGE_DETECTION: Final = ("auto", "listing", "fetch")
_SCHEDULE_EVERY_RE: Final = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$")
_DURATION_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as ``90s``, ``15m``, ``6h``, ``7d``; None if it is not one."""
    m = _DURATION_RE.match(text.strip())
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where the catalogue lives.

    Attributes:
        url: A PostgreSQL DSN; ``None`` means not configured (``demo`` then starts its own).
        pool_min: Smallest number of pooled connections.
        pool_max: Largest number of pooled connections.
        replica_url: A streaming replica of ``url`` the API reads from (optional). The API
            learns the catalogue's generation from the replica itself, so it never serves a
            generation the replica has not replayed; harvests and merges write to ``url``.
    """

    url: str | None = None
    pool_min: int = 1
    pool_max: int = 10
    replica_url: str | None = None


REQUEST_LOG_MODES: Final = ("all", "sample", "errors")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The HTTP API.

    Attributes:
        host: Address to bind.
        port: Port to bind.
        public_url: Base URL clients reach us at; empty means derived from each request.
        workers: API processes sharing the port (``SO_REUSEPORT``), each with its own
            database pool and response cache; 0 means one per CPU this process may run on.
        request_log: ``all`` logs one line per request; ``sample`` logs every error and
            every answer that was not served from memory, one in ``1 / request_log_sample``
            of the rest, and a ``requests_summary`` line (counts by status) every minute;
            ``errors`` is ``sample`` with no warm answer logged.
        request_log_sample: The fraction of warm answers logged in ``sample`` mode.
        cache_mb: How many MiB of rendered responses each API process keeps in memory.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    workers: int = 0
    request_log: str = "all"
    request_log_sample: float = 0.01
    cache_mb: int = 256


@dataclass(frozen=True, slots=True)
class HarvestConfig:
    """Settings shared by every harvest.

    Durations are strings such as ``90s``, ``15m``, ``6h`` or ``7d``, read once: each has a
    ``*_s`` field giving seconds (0 when the string is not a duration; ``load`` refuses those).

    Attributes:
        tombstone_after: Consecutive complete listings a tool may be missing from before the
            API stops serving it.
        user_agent: The User-Agent sent upstream.
        stale_after: A record not confirmed by a harvest for this long is marked stale.
        revalidate_after: A tool whose listing entry is unchanged is confirmed without
            fetching its versions and files again, until this long after they were last
            fetched; ``0s`` fetches every tool's details on every run.
        circuit_failures: Consecutive failed runs that open an upstream's circuit: its
            scheduled harvests are skipped until the circuit's pause ends.
        circuit_open_for: The first pause; it doubles with each further failed run.
        circuit_open_max: The longest pause.
        request_poll: How often a worker looks for "harvest now" requests besides being
            notified of them.
    """

    tombstone_after: int = 3
    user_agent: str = "trs-aggregator/0.1 (+https://github.com/trs-aggregator)"
    stale_after: str = "7d"
    revalidate_after: str = "7d"
    circuit_failures: int = 3
    circuit_open_for: str = "15m"
    circuit_open_max: str = "1d"
    request_poll: str = "10s"

    stale_after_s: float = field(init=False, repr=False, compare=False)
    revalidate_after_s: float = field(init=False, repr=False, compare=False)
    circuit_open_for_s: float = field(init=False, repr=False, compare=False)
    circuit_open_max_s: float = field(init=False, repr=False, compare=False)
    request_poll_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _HARVEST_DURATIONS:
            object.__setattr__(self, f"{name}_s", parse_duration(getattr(self, name)) or 0.0)


_HARVEST_DURATIONS: Final = (
    "stale_after",
    "revalidate_after",
    "circuit_open_for",
    "circuit_open_max",
    "request_poll",
)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream registry.

    Attributes:
        name: Short unique name, ``[a-z0-9-]``; appears in provenance and qualified ids.
        url: The TRS base URL (``…/ga4gh/trs/v2``).
        kind: ``trs`` (live API), ``static`` (a static TRS tree) or ``aggregator``.
        mode: ``mirror`` stores every file; ``index`` stores metadata only.
        priority: Lower wins when records disagree.
        schedule: ``every 6h`` style interval or a five-field cron expression.
        page_size: The ``limit`` asked for when listing tools.
        concurrency: Requests in flight to this upstream at once.
        timeout_s: Total time allowed for one request.
        connect_timeout_s: Time allowed to connect.
        max_body_bytes: Largest response body accepted.
        min_bytes_per_s: A body arriving slower than this, on average, once
            *min_rate_after_s* have passed, is abandoned (and retried); 0 disables.
        min_rate_after_s: How long a body may take before its rate is checked.
        retries: Attempts after the first for timeouts, 429 and 5xx.
        backoff_s: The first retry's largest delay; it doubles with each attempt (full jitter).
        max_retry_after_s: The longest ``Retry-After`` honoured; a longer one fails the
            request at once.
        rate_limit: Requests per second to this upstream; 0 for no limit.
        abort_after_failures: Consecutive requests failing even after their retries that
            stop the run (the upstream is down); 0 never stops.
        run_budget_s: How long a run may fetch. When it runs out, tools not yet fetched keep
            what was published; the listing may go on alone up to twice as long, and a run
            whose listing did not finish publishes nothing.
        redirect_hosts: Hosts (``name`` or ``name:port``) a redirect may lead to besides the
            upstream's own.
        file_hosts: Hosts (``name``, ``name:port``, an IP address or network such as
            ``10.0.0.0/8``) that files at absolute URLs may be fetched from even at a
            loopback, private, link-local or multicast address.
        change_detection: How a run tells that a tool is unchanged and need not be fetched:
            ``listing`` trusts an unchanged listing entry, ``fetch`` fetches every tool's
            details every run, ``auto`` trusts entries whose versions carry ``meta_version``.
        allow_http: Permit plain http to a non-loopback host.
        token_env: Name of an environment variable holding a bearer token.
        enabled: Harvest on schedule.
    """

    name: str
    url: str
    kind: str = "trs"
    mode: str = "mirror"
    priority: int = 100
    schedule: str = "every 6h"
    page_size: int = 100
    concurrency: int = 4
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_body_bytes: int = 20 * 1024 * 1024
    min_bytes_per_s: int = 1024
    min_rate_after_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0
    rate_limit: float = 0.0
    abort_after_failures: int = 5
    run_budget_s: float = 6 * 3600.0
    redirect_hosts: tuple[str, ...] = ()
    file_hosts: tuple[str, ...] = ()
    change_detection: str = "auto"
    allow_http: bool = False
    token_env: str = ""
    enabled: bool = True

    def interval_seconds(self) -> int | None:
        """Return the schedule as seconds when it is an ``every N<unit>`` interval."""
        m = _SCHEDULE_EVERY_RE.match(self.schedule.strip())
        return int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None


@dataclass(frozen=True, slots=True)
class MergeConfig:
    """How upstream tools are merged.

    Attributes:
        max_tools_per_upstream: A key (alias, global id, descriptor checksum) held by more
            tools than this in any one upstream is not identifying and joins nothing.
        always: Pairs of qualified ids (``#upstream/<name>/<id>``) always merged, whatever
            the evidence says.
        never: Pairs of qualified ids never merged, whatever the evidence says (a *never*
            also beats an *always* that would chain the two together).
    """

    max_tools_per_upstream: int = 1
    always: tuple[tuple[str, str], ...] = ()
    never: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ChangesConfig:
    """The change feed (``/aggregator/v1/changes``).

    Attributes:
        retention: How long changes are kept; a cursor older than this answers 410.
        heartbeat: How often an idle event stream sends a comment line.
    """

    retention: str = "30d"
    heartbeat: str = "15s"

    @property
    def retention_s(self) -> float:
        """*retention* in seconds."""
        return parse_duration(self.retention) or 0.0

    @property
    def heartbeat_s(self) -> float:
        """*heartbeat* in seconds."""
        return parse_duration(self.heartbeat) or 0.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    changes: ChangesConfig = field(default_factory=ChangesConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    source: str = "<defaults>"

    def upstream(self, name: str) -> UpstreamConfig:
        """Return the upstream called *name*; raise ConfigError if there is none."""
        for u in self.upstreams:
            if u.name == name:
                return u
        known = ", ".join(u.name for u in self.upstreams) or "none configured"
        raise ConfigError("upstreams", f"no upstream named {name!r} (known: {known})")


def load(path: Path | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Load *path* (or the default file if it exists, else built-in defaults).

    *environ* may override the database URL with ``AGGREGATOR_DATABASE_URL``. Raises
    ConfigError naming the offending key.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("", f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("", f"{path}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    return from_dict(data, environ, source=source)


def from_dict(
    data: Mapping[str, Any], environ: Mapping[str, str] = os.environ, *, source: str = "<dict>"
) -> Config:
    """Validate a parsed TOML document into a Config."""
    _no_unknown(data, "", ("database", "server", "harvest", "merge", "changes", "upstreams"))
    merge = _merge_section(data.get("merge", {}))
    database = _section(DatabaseConfig, data.get("database", {}), "database")
    if environ.get(DATABASE_URL_ENV):
        database = dataclasses.replace(database, url=environ[DATABASE_URL_ENV])
    if database.url is not None and not database.url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database.url", "must be a postgresql:// URL")
    if database.replica_url is not None and not database.replica_url.startswith(
        ("postgres://", "postgresql://")
    ):
        raise ConfigError("database.replica_url", "must be a postgresql:// URL")
    if database.pool_min < 1:
        raise ConfigError("database.pool_min", "must be at least 1")
    if database.pool_max < database.pool_min:
        raise ConfigError("database.pool_max", "must be at least pool_min")
    server = _section(ServerConfig, data.get("server", {}), "server")
    if not 0 <= server.port <= 65535:
        raise ConfigError("server.port", "must be between 0 and 65535")
    if server.public_url and not _is_http_url(server.public_url):
        raise ConfigError("server.public_url", "must be an http(s) URL")
    if server.workers < 0:
        raise ConfigError("server.workers", "must be 0 (one per CPU) or more")
    if server.request_log not in REQUEST_LOG_MODES:
        raise ConfigError("server.request_log", f"must be one of {', '.join(REQUEST_LOG_MODES)}")
    if not 0 <= server.request_log_sample <= 1:
        raise ConfigError("server.request_log_sample", "must be between 0 and 1")
    if server.cache_mb < 1:
        raise ConfigError("server.cache_mb", "must be at least 1")
    harvest = _section(HarvestConfig, data.get("harvest", {}), "harvest")
    if harvest.tombstone_after < 1:
        raise ConfigError("harvest.tombstone_after", "must be at least 1")
    if harvest.circuit_failures < 1:
        raise ConfigError("harvest.circuit_failures", "must be at least 1")
    for name in _HARVEST_DURATIONS:
        seconds = parse_duration(getattr(harvest, name))
        if seconds is None:
            raise ConfigError(
                f"harvest.{name}", "must be a duration such as '90s', '15m', '6h' or '7d'"
            )
        if seconds == 0 and name in ("stale_after", "request_poll"):
            raise ConfigError(f"harvest.{name}", "must be longer than 0s")
    changes = _section(ChangesConfig, data.get("changes", {}), "changes")
    for name in ("retention", "heartbeat"):
        if not parse_duration(getattr(changes, name)):
            raise ConfigError(f"changes.{name}", "must be a duration longer than 0s, e.g. '30d'")
    raw_upstreams = data.get("upstreams", [])
    if not isinstance(raw_upstreams, list):
        raise ConfigError("upstreams", "must be an array of tables ([[upstreams]])")
    upstreams = tuple(_upstream(u, f"upstreams[{i}]") for i, u in enumerate(raw_upstreams))
    seen: set[str] = set()
    for i, u in enumerate(upstreams):
        if u.name in seen:
            raise ConfigError(f"upstreams[{i}].name", f"duplicate upstream name {u.name!r}")
        seen.add(u.name)
    return Config(
        database=database,
        server=server,
        harvest=harvest,
        merge=merge,
        changes=changes,
        upstreams=upstreams,
        source=source,
    )


def upstream_table(upstream: UpstreamConfig, *, defaults: bool = True) -> dict[str, Any]:
    """*upstream* as its ``[[upstreams]]`` table; without *defaults*, only the keys that differ
    from the defaults (and ``name``, ``url``)."""
    table: dict[str, Any] = {}
    for f in dataclasses.fields(upstream):
        value = getattr(upstream, f.name)
        if isinstance(value, tuple):
            value = list(value)
        if defaults or f.name in ("name", "url") or value != _default_of(f):
            table[f.name] = value
    return table


def _default_of(f: dataclasses.Field[Any]) -> Any:
    return list(f.default) if isinstance(f.default, tuple) else f.default


def upstream_from_table(raw: Any, key: str = "upstream") -> UpstreamConfig:
    """Validate one ``[[upstreams]]`` table; raises ConfigError naming the offending key."""
    return _upstream(raw, key)


def _upstream(raw: Any, key: str) -> UpstreamConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "must be a table")
    for required in ("name", "url"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}", "is required")
    u: UpstreamConfig = _section(UpstreamConfig, raw, key)
    if not UPSTREAM_NAME_RE.match(u.name):
        raise ConfigError(
            f"{key}.name",
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        )
    if u.kind not in KINDS:
        raise ConfigError(f"{key}.kind", f"must be one of {', '.join(KINDS)}")
    if u.mode not in MODES:
        raise ConfigError(f"{key}.mode", f"must be one of {', '.join(MODES)}")
    if u.change_detection not in CHANGE_DETECTION:
        raise ConfigError(
            f"{key}.change_detection", f"must be one of {', '.join(CHANGE_DETECTION)}"
        )
    if not _is_http_url(u.url):
        raise ConfigError(f"{key}.url", "must be an http(s) URL")
    if "@" in urlsplit(u.url).netloc:
        raise ConfigError(
            f"{key}.url",
            "must not carry credentials (user:password@); put a token in an environment "
            "variable and name it with token_env",
        )
    if urlsplit(u.url).scheme == "http" and not u.allow_http and not _is_loopback(u.url):
        raise ConfigError(
            f"{key}.url", "plain http to a remote host; use https or set allow_http = true"
        )
    seconds = u.interval_seconds()
    if seconds == 0 or (seconds is None and not _is_crontab(u.schedule)):
        raise ConfigError(
            f"{key}.schedule",
            "must be 'every N<s|m|h|d>' with N > 0 or a valid five-field cron expression",
        )
    for name, low in (
        ("page_size", 1),
        ("concurrency", 1),
        ("retries", 0),
        ("max_body_bytes", 1024),
        ("min_bytes_per_s", 0),
        ("backoff_s", 0),
        ("max_retry_after_s", 0),
        ("rate_limit", 0),
        ("abort_after_failures", 0),
        ("min_rate_after_s", 0),
    ):
        if getattr(u, name) < low:
            raise ConfigError(f"{key}.{name}", f"must be at least {low}")
    for name in ("timeout_s", "connect_timeout_s", "run_budget_s"):
        if getattr(u, name) <= 0:
            raise ConfigError(f"{key}.{name}", "must be positive")
    for i, host in enumerate(u.redirect_hosts):
        if not host or "/" in host or host != host.strip():
            raise ConfigError(
                f"{key}.redirect_hosts[{i}]", "must be a host name, optionally with ':port'"
            )
    for i, host in enumerate(u.file_hosts):
        if not _is_host_or_network(host):
            raise ConfigError(
                f"{key}.file_hosts[{i}]",
                "must be a host name (optionally with ':port'), an IP address or a network",
            )
    if u.token_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", u.token_env):
        raise ConfigError(f"{key}.token_env", "must be the name of an environment variable")
    return dataclasses.replace(u, url=u.url.rstrip("/"))


def _merge_section(raw: Any) -> MergeConfig:
    """Validate ``[merge]``; a pair may not be in both ``always`` and ``never``."""
    merge: MergeConfig = _section(MergeConfig, raw, "merge")
    if merge.max_tools_per_upstream < 1:
        raise ConfigError("merge.max_tools_per_upstream", "must be at least 1")
    merge = dataclasses.replace(
        merge, always=_merge_pairs(merge.always, "always"), never=_merge_pairs(merge.never, "never")
    )
    both = {tuple(sorted(p)) for p in merge.always} & {tuple(sorted(p)) for p in merge.never}
    if both:
        raise ConfigError("merge.never", f"{min(both)} is also in merge.always")
    return merge


def _merge_pairs(raw: Any, name: str) -> tuple[tuple[str, str], ...]:
    """Validate ``merge.always`` / ``merge.never``: pairs of two different qualified ids."""
    pairs = []
    for i, pair in enumerate(raw):
        key = f"merge.{name}[{i}]"
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(q, str) for q in pair)
        ):
            raise ConfigError(
                key, 'must be a pair of qualified ids, ["#upstream/a/x", "#upstream/b/y"]'
            )
        for q in pair:
            upstream, _, tool = q.removeprefix("#upstream/").partition("/")
            if not q.startswith("#upstream/") or not upstream or not tool:
                raise ConfigError(key, f"{q!r} is not a qualified id (#upstream/<name>/<id>)")
        if pair[0] == pair[1]:
            raise ConfigError(key, "names the same record twice")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def check_tokens(
    config: Config, names: Sequence[str] = (), environ: Mapping[str, str] = os.environ
) -> None:
    """Raise ConfigError naming the key when an upstream that would be harvested (*names*, or
    every enabled one) names in ``token_env`` a variable that is not set."""
    for i, u in enumerate(config.upstreams):
        chosen = u.name in names if names else u.enabled
        if chosen and u.token_env and not environ.get(u.token_env):
            raise ConfigError(
                f"upstreams[{i}].token_env",
                f"environment variable {u.token_env} is not set (upstream {u.name!r})",
            )


def _is_host_or_network(entry: str) -> bool:
    if not entry or entry != entry.strip() or "@" in entry:
        return False
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return "/" not in entry and _is_http_url(f"http://{entry}/")
    return True


def _section(cls: type[Any], raw: Any, key: str) -> Any:
    """Build dataclass *cls* from table *raw*, checking names and types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _no_unknown(raw, key, tuple(fields))
    values: dict[str, Any] = {}
    for name, value in raw.items():
        expected = fields[name].type
        if not _type_ok(value, str(expected)):
            raise ConfigError(
                f"{key}.{name}", f"must be {_type_word(str(expected))}, not {type(value).__name__}"
            )
        if str(expected) == "float":
            values[name] = float(value)
        elif str(expected).startswith("tuple["):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)


def _no_unknown(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    for name in raw:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (expected one of {', '.join(allowed)})")


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "bool":
        return isinstance(value, bool)
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected in ("str", "str | None"):
        return isinstance(value, str)
    if expected == "tuple[str, ...]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected == "tuple[tuple[str, str], ...]":
        return isinstance(value, list)
    return True


def _type_word(expected: str) -> str:
    return {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "tuple[str, ...]": "an array of strings",
        "tuple[tuple[str, str], ...]": "an array of pairs of qualified ids",
    }.get(expected, "a string")


def _is_crontab(schedule: str) -> bool:
    """Whether *schedule* is a five-field cron expression the scheduler accepts."""
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - apscheduler loads slowly

    try:
        CronTrigger.from_crontab(schedule, timezone=dt.UTC)
    except ValueError:
        return False
    return True


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
