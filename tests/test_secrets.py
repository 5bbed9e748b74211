"""Secrets in configuration and logs: user-info refused, unset tokens a configuration error, and
log lines that are always JSON and never show a token or a password."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from aggregator.config import from_dict
from aggregator.errors import ConfigError
from aggregator.logs import configure_logging
from tests.test_cli import run_cli


def upstreams(*entries: dict[str, Any]) -> dict[str, Any]:
    """A config document with these upstreams."""
    return {"upstreams": [{"name": f"u{i}", **e} for i, e in enumerate(entries)]}


def test_user_info_in_an_upstream_url_is_refused() -> None:
    """A password in an upstream URL is refused at load, pointing to token_env."""
    with pytest.raises(ConfigError) as e:
        from_dict(upstreams({"url": "https://bob:hunter2@reg.example/ga4gh/trs/v2"}))
    assert e.value.key == "upstreams[0].url" and "token_env" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_an_unset_token_is_a_configuration_error() -> None:
    """token_env naming an unset variable is an error for the upstreams that would be
    harvested: every enabled one, or the ones named."""
    from aggregator.config import check_tokens

    config = from_dict(
        upstreams(
            {"url": "https://a.example/ga4gh/trs/v2"},
            {"url": "https://b.example/ga4gh/trs/v2", "token_env": "B_TOKEN"},
            {"url": "https://c.example/ga4gh/trs/v2", "token_env": "C_TOKEN", "enabled": False},
        )
    )
    with pytest.raises(ConfigError) as e:
        check_tokens(config, (), {})
    assert e.value.key == "upstreams[1].token_env" and "B_TOKEN" in str(e.value)
    check_tokens(config, (), {"B_TOKEN": "x"})
    check_tokens(config, ("u0",), {})
    with pytest.raises(ConfigError) as e:
        check_tokens(config, ("u2",), {"B_TOKEN": "x"})
    assert e.value.key == "upstreams[2].token_env"
    with pytest.raises(ConfigError):
        from_dict(upstreams({"url": "https://a.example/", "token_env": "NOT A NAME"}))


@pytest.mark.parametrize("command", ["harvest", "run"])
async def test_commands_that_harvest_refuse_an_unset_token(tmp_path: Path, command: str) -> None:
    """``harvest`` and ``run`` exit 2 with one line naming the key when a token is unset."""
    config = tmp_path / "aggregator.toml"
    config.write_text(
        '[database]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n\n'
        '[[upstreams]]\nname = "reg"\nurl = "https://reg.example/ga4gh/trs/v2"\n'
        'token_env = "TRS_AGG_TEST_UNSET_TOKEN"\n'
    )
    result = await run_cli(tmp_path, command, "--config", str(config), timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "upstreams[0].token_env" in lines[0] and "TRS_AGG_TEST_UNSET_TOKEN" in lines[0]


class Unserialisable:
    """What asyncpg logs: an object as the message, not a string."""

    def __str__(self) -> str:
        return "connection lost"


def test_log_lines_are_json_and_mask_secrets(capfd: pytest.CaptureFixture[str]) -> None:
    """Library records carrying objects come out as JSON lines (no "--- Logging error ---"),
    and URL user-info and registered tokens are masked in every field."""
    from aggregator import redact

    configure_logging(json=True, cache=False)
    try:
        redact.register(["tok-5e3a9d0c77"])
        lib = logging.getLogger("asyncpg.pool")
        lib.warning(Unserialisable())
        lib.warning("closing %s", Unserialisable(), extra={"meta": Unserialisable()})
        lib.error("dsn postgresql://app:s3cr3t@db.example/agg")
        structlog.get_logger().warning(
            "harvest_error_recorded",
            error="HTTP 401 from https://bob:hunter2@reg.example/x",
            headers={"Authorization": "Bearer tok-5e3a9d0c77"},
        )
        try:
            raise RuntimeError("failed with token tok-5e3a9d0c77")  # noqa: TRY301 - logged below
        except RuntimeError:
            lib.exception("crash")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    assert "Logging error" not in err
    lines = [orjson.loads(line) for line in err.splitlines()]
    assert len(lines) == 5
    assert lines[0]["event"] == "connection lost"
    for secret in ("s3cr3t", "hunter2", "tok-5e3a9d0c77"):
        assert secret not in err
    assert "***@" in err
