"""Configuration loading and validation, and how the CLI reports a bad configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import (
    DATABASE_URL_ENV,
    Config,
    DatabaseConfig,
    HarvestConfig,
    ServerConfig,
    UpstreamConfig,
    from_dict,
    load,
)
from aggregator.errors import ConfigError

GOOD = {"name": "good", "url": "https://registry.example.org/ga4gh/trs/v2"}

FULL_TOML = """
[database]
url = "postgresql://agg:secret@db.example.org:5433/catalogue"
pool_min = 2
pool_max = 7

[server]
host = "0.0.0.0"
port = 9090
public_url = "https://trs.example.org"

[harvest]
tombstone_after = 5
user_agent = "test-agent/1.0"

[[upstreams]]
name = "dockstore"
url = "https://dockstore.org/api/ga4gh/trs/v2/"
kind = "trs"
mode = "index"
priority = 10
schedule = "every 30m"
page_size = 50
concurrency = 2
timeout_s = 30
connect_timeout_s = 2.5
max_body_bytes = 4096
retries = 0
allow_http = false
token_env = "DOCKSTORE_TOKEN"
enabled = false

[[upstreams]]
name = "lab-mirror-2"
url = "http://mirror.lab.example/ga4gh/trs/v2"
kind = "static"
allow_http = true
schedule = "15 */6 * * mon-fri"
"""


def error_for(data: dict[str, Any], environ: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError from_dict raises for *data* (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as info:
        from_dict(data, environ or {})
    return info.value


def test_defaults_when_there_is_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no --config and no config/aggregator.toml, load() gives the built-in defaults."""
    monkeypatch.chdir(tmp_path)
    config = load(None, environ={})
    assert config == Config()
    assert config.source == "<defaults>"
    assert config.database == DatabaseConfig(url=None, pool_min=1, pool_max=10)
    assert config.server == ServerConfig(host="127.0.0.1", port=8080, public_url="")
    assert config.harvest.tombstone_after == 3
    assert config.upstreams == ()


def test_default_file_is_picked_up_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, config/aggregator.toml in the working directory is read when present."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "aggregator.toml").write_text("[server]\nport = 8181\n")
    config = load(None, environ={})
    assert config.server.port == 8181
    assert config.source == str(Path("config/aggregator.toml"))


def test_full_file_round_trips(tmp_path: Path) -> None:
    """Every key of a complete file lands in the matching field, ints widened to floats."""
    path = tmp_path / "full.toml"
    path.write_text(FULL_TOML)
    config = load(path, environ={})
    assert config == Config(
        database=DatabaseConfig(
            url="postgresql://agg:secret@db.example.org:5433/catalogue", pool_min=2, pool_max=7
        ),
        server=ServerConfig(host="0.0.0.0", port=9090, public_url="https://trs.example.org"),
        harvest=HarvestConfig(tombstone_after=5, user_agent="test-agent/1.0"),
        upstreams=(
            UpstreamConfig(
                name="dockstore",
                url="https://dockstore.org/api/ga4gh/trs/v2",
                kind="trs",
                mode="index",
                priority=10,
                schedule="every 30m",
                page_size=50,
                concurrency=2,
                timeout_s=30.0,
                connect_timeout_s=2.5,
                max_body_bytes=4096,
                retries=0,
                allow_http=False,
                token_env="DOCKSTORE_TOKEN",
                enabled=False,
            ),
            UpstreamConfig(
                name="lab-mirror-2",
                url="http://mirror.lab.example/ga4gh/trs/v2",
                kind="static",
                allow_http=True,
                schedule="15 */6 * * mon-fri",
            ),
        ),
        source=str(path),
    )
    assert isinstance(config.upstreams[0].timeout_s, float)
    assert config.upstreams[0].interval_seconds() == 1800
    assert config.upstreams[1].interval_seconds() is None


def test_environment_overrides_the_database_url(tmp_path: Path) -> None:
    """AGGREGATOR_DATABASE_URL replaces [database] url; an empty value leaves the file's."""
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "postgresql://from-file/db"\npool_max = 3\n')
    env_url = "postgresql://from-env@/other?host=/tmp"
    overridden = load(path, environ={DATABASE_URL_ENV: env_url})
    assert overridden.database == DatabaseConfig(url=env_url, pool_min=1, pool_max=3)
    assert load(path, environ={DATABASE_URL_ENV: ""}).database.url == "postgresql://from-file/db"
    assert from_dict({}, {DATABASE_URL_ENV: env_url}).database.url == env_url
    assert error_for({}, {DATABASE_URL_ENV: "mysql://x/y"}).key == "database.url"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        # unknown keys, at every level
        ({"databse": {}}, "databse"),
        ({"database": {"uri": "postgresql://x/y"}}, "database.uri"),
        ({"server": {"bind": "0.0.0.0"}}, "server.bind"),
        ({"harvest": {"tombstone": 2}}, "harvest.tombstone"),
        (
            {"upstreams": [GOOD, {**GOOD, "name": "b", "intervall": "every 1h"}]},
            "upstreams[1].intervall",
        ),
        # wrong types
        ({"database": "postgresql://x/y"}, "database"),
        ({"database": {"url": 5}}, "database.url"),
        ({"database": {"pool_max": 2.5}}, "database.pool_max"),
        ({"server": {"port": "8080"}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"harvest": {"tombstone_after": "3"}}, "harvest.tombstone_after"),
        ({"upstreams": {"name": "a", "url": "https://x.org"}}, "upstreams"),
        ({"upstreams": ["https://x.org"]}, "upstreams[0]"),
        ({"upstreams": [{**GOOD, "allow_http": "yes"}]}, "upstreams[0].allow_http"),
        ({"upstreams": [{**GOOD, "timeout_s": True}]}, "upstreams[0].timeout_s"),
        ({"upstreams": [{**GOOD, "timeout_s": "60"}]}, "upstreams[0].timeout_s"),
        ({"upstreams": [{**GOOD, "priority": 1.5}]}, "upstreams[0].priority"),
        ({"upstreams": [{**GOOD, "token_env": 7}]}, "upstreams[0].token_env"),
        # values out of range
        ({"database": {"url": "mysql://x/y"}}, "database.url"),
        ({"database": {"pool_min": 0}}, "database.pool_min"),
        ({"database": {"pool_min": 5, "pool_max": 4}}, "database.pool_max"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"public_url": "trs.example.org"}}, "server.public_url"),
        ({"server": {"public_url": "http://[::1"}}, "server.public_url"),
        ({"harvest": {"tombstone_after": 0}}, "harvest.tombstone_after"),
        # upstreams
        ({"upstreams": [{"url": GOOD["url"]}]}, "upstreams[0].name"),
        ({"upstreams": [GOOD, {"name": "b"}]}, "upstreams[1].url"),
        ({"upstreams": [GOOD, {"name": "b", "url": "ftp://x.org/trs"}]}, "upstreams[1].url"),
        ({"upstreams": [GOOD, {"name": "b", "url": "registry.example.org"}]}, "upstreams[1].url"),
        ({"upstreams": [GOOD, {"name": "b", "url": "https://[::1/trs"}]}, "upstreams[1].url"),
        ({"upstreams": [{**GOOD, "name": "Bad_Name"}]}, "upstreams[0].name"),
        ({"upstreams": [{**GOOD, "name": "-leading"}]}, "upstreams[0].name"),
        ({"upstreams": [{**GOOD, "kind": "dockstore"}]}, "upstreams[0].kind"),
        ({"upstreams": [{**GOOD, "mode": "copy"}]}, "upstreams[0].mode"),
        ({"upstreams": [{**GOOD, "page_size": 0}]}, "upstreams[0].page_size"),
        ({"upstreams": [{**GOOD, "concurrency": 0}]}, "upstreams[0].concurrency"),
        ({"upstreams": [{**GOOD, "retries": -1}]}, "upstreams[0].retries"),
        ({"upstreams": [{**GOOD, "max_body_bytes": 100}]}, "upstreams[0].max_body_bytes"),
        ({"upstreams": [{**GOOD, "timeout_s": 0}]}, "upstreams[0].timeout_s"),
        ({"upstreams": [{**GOOD, "connect_timeout_s": -1.0}]}, "upstreams[0].connect_timeout_s"),
        ({"upstreams": [GOOD, {**GOOD, "url": "https://other.example.org"}]}, "upstreams[1].name"),
    ],
)
def test_invalid_values_name_their_key(data: dict[str, Any], key: str) -> None:
    """Each validation rule raises ConfigError whose key (and message) names the culprit."""
    error = error_for(data)
    assert error.key == key
    assert str(error).startswith(f"{key}: ")


def test_duplicate_upstream_names_are_refused() -> None:
    """Two upstreams with the same name: the second one's name is blamed, with the name."""
    error = error_for({"upstreams": [GOOD, {**GOOD, "name": "other"}, GOOD]})
    assert error.key == "upstreams[2].name"
    assert "duplicate" in error.problem and "'good'" in error.problem


@pytest.mark.parametrize(
    "schedule",
    [
        "hourly",
        "every 6",
        "every 6 weeks",
        "every 0m",
        "every -1h",
        "* * * *",
        "* * * * * *",
        "61 * * * *",
        "0 25 * * *",
        "a b c d e",
    ],
)
def test_bad_schedules_are_refused(schedule: str) -> None:
    """A schedule that is neither a positive 'every N<unit>' nor a valid crontab is refused."""
    assert error_for({"upstreams": [{**GOOD, "schedule": schedule}]}).key == (
        "upstreams[0].schedule"
    )


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        ("every 45s", 45),
        ("every 10m", 600),
        ("every 6h", 21600),
        ("every 2d", 172800),
        ("0 */6 * * *", None),
        ("*/15 * * * mon-fri", None),
    ],
)
def test_good_schedules_are_accepted(schedule: str, seconds: int | None) -> None:
    """Interval and five-field cron schedules load, and intervals convert to seconds."""
    upstream = from_dict({"upstreams": [{**GOOD, "schedule": schedule}]}, {}).upstreams[0]
    assert upstream.interval_seconds() == seconds


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/ga4gh/trs/v2",
        "http://localhost/ga4gh/trs/v2",
        "http://[::1]:9000/ga4gh/trs/v2",
        "http://127.1.2.3/trs",
    ],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """Plain http to a loopback host needs no allow_http."""
    assert from_dict({"upstreams": [{**GOOD, "url": url}]}, {}).upstreams[0].url == url


def test_plain_http_to_a_remote_host_needs_allow_http() -> None:
    """Plain http to a non-loopback host is refused unless the upstream sets allow_http."""
    remote = {**GOOD, "url": "http://registry.example.org/ga4gh/trs/v2"}
    error = error_for({"upstreams": [remote]})
    assert error.key == "upstreams[0].url" and "allow_http" in error.problem
    assert error_for({"upstreams": [{**remote, "url": "http://10.1.2.3/trs"}]}).key == (
        "upstreams[0].url"
    )
    allowed = from_dict({"upstreams": [{**remote, "allow_http": True}]}, {})
    assert allowed.upstreams[0].url == remote["url"]


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    """A missing file, invalid TOML or non-UTF-8 bytes raise ConfigError naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load(missing, environ={})
    assert str(missing) in str(info.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken, environ={})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[server]\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load(binary, environ={})


def test_config_upstream_lookup() -> None:
    """Config.upstream finds by name and otherwise raises ConfigError listing the known ones."""
    config = from_dict({"upstreams": [GOOD, {**GOOD, "name": "two"}]}, {})
    assert config.upstream("two").name == "two"
    with pytest.raises(ConfigError, match=r"no upstream named 'three' \(known: good, two\)"):
        config.upstream("three")


BAD_KIND = """
[[upstreams]]
name = "ok"
url = "https://ok.example.org/ga4gh/trs/v2"

[[upstreams]]
name = "wrong"
url = "https://wrong.example.org/ga4gh/trs/v2"
kind = "gitlab"
"""


@pytest.mark.parametrize("flag_after_command", [False, True])
def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path, flag_after_command: bool) -> None:
    """`--config BAD` before or after the command: exit 2 and one stderr line naming the key."""
    path = tmp_path / "bad.toml"
    path.write_text(BAD_KIND)
    args = (
        ["migrate", "--config", str(path)]
        if flag_after_command
        else ["--config", str(path), "migrate"]
    )
    env = {"PATH": "/usr/bin:/bin", "AGGREGATOR_DATABASE_URL": ""}
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trs-aggregator: config error: upstreams[1].kind: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_without_a_database_says_so(tmp_path: Path) -> None:
    """A command needing the database, with none configured, exits 2 naming database.url."""
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        (
            "trs-aggregator: config error: database.url: no database configured; set [database] "
            "url or AGGREGATOR_DATABASE_URL"
        )
    ]
