"""Tests for aggregator.pgcluster: finding the binaries and running a private cluster."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from aggregator import pgcluster
from aggregator.pgcluster import ClusterError, LocalCluster, PgBinariesNotFound, find_pg_bindir
from tests.support import eventually, fetch


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp (pytest's tmp_path is long and, as root, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="trsagg-"))
    os.chmod(path, 0o755)
    yield path
    for pg_version in path.rglob("PG_VERSION"):
        LocalCluster(pg_version.parent).stop()
    shutil.rmtree(path, ignore_errors=True)


async def _fetchval(dsn: str, query: str) -> object:
    rows = await fetch(dsn, query)
    return rows[0][0]


def _stopped(cluster: LocalCluster) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not cluster.is_running()

    return check


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _make_fake_bindir(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        program = directory / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return directory


def test_find_pg_bindir_honours_override(tmp_path: Path) -> None:
    """AGGREGATOR_PG_BINDIR wins over PATH when it holds initdb and pg_ctl."""
    fake = _make_fake_bindir(tmp_path / "pg" / "bin")
    found = find_pg_bindir({"AGGREGATOR_PG_BINDIR": str(fake), "PATH": os.environ["PATH"]})
    assert found == fake


def test_find_pg_bindir_rejects_bad_override(tmp_path: Path) -> None:
    """A bad AGGREGATOR_PG_BINDIR is an error that says how to install PostgreSQL."""
    with pytest.raises(PgBinariesNotFound, match="apt-get install postgresql"):
        find_pg_bindir({"AGGREGATOR_PG_BINDIR": str(tmp_path)})


def test_find_pg_bindir_uses_path(tmp_path: Path) -> None:
    """The directory of pg_ctl on PATH is used when initdb is beside it."""
    fake = _make_fake_bindir(tmp_path / "bin")
    assert find_pg_bindir({"PATH": f"{tmp_path / 'empty'}{os.pathsep}{fake}"}) == fake


def test_find_pg_bindir_needs_initdb_beside_pg_ctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pg_ctl without initdb beside it is skipped; nothing found raises PgBinariesNotFound."""
    lone = tmp_path / "bin"
    lone.mkdir()
    (lone / "pg_ctl").write_text("#!/bin/sh\n")
    (lone / "pg_ctl").chmod(0o755)
    monkeypatch.setattr(pgcluster, "CANDIDATE_BINDIR_GLOBS", ())
    with pytest.raises(PgBinariesNotFound, match="apt-get install postgresql"):
        find_pg_bindir({"PATH": str(lone)})


def test_find_pg_bindir_prefers_newest_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among the usual install locations the highest version is chosen, numerically."""
    for version in ("9.6", "15", "16"):
        _make_fake_bindir(tmp_path / "postgresql" / version / "bin")
    monkeypatch.setattr(
        pgcluster, "CANDIDATE_BINDIR_GLOBS", (str(tmp_path / "postgresql" / "*" / "bin"),)
    )
    assert find_pg_bindir({}) == tmp_path / "postgresql" / "16" / "bin"


async def test_start_query_stop_restart_keeps_data(short_tmp: Path) -> None:
    """A cluster starts on a unix socket only, serves queries, and restarts on its data dir."""
    data_dir = short_tmp / "data"
    cluster = LocalCluster(data_dir)
    dsn = cluster.start()
    assert (data_dir / "PG_VERSION").is_file()
    assert (data_dir / "server.log").is_file()
    assert await _fetchval(dsn, "select 1") == 1
    assert await _fetchval(dsn, "show listen_addresses") == ""
    assert await _fetchval(dsn, "show fsync") == "on"
    assert await _fetchval(dsn, "show server_encoding") == "UTF8"
    await fetch(dsn, "create table kept as select 42 as answer")
    assert cluster.start() == dsn  # already running: same server, no second initdb

    cluster.stop()
    assert not cluster.is_running()
    assert not (data_dir / "postmaster.pid").exists()
    cluster.stop()  # stopping a stopped cluster is not an error

    again = LocalCluster(data_dir)
    dsn_again = again.start()
    assert await _fetchval(dsn_again, "select answer from kept") == 42
    again.stop()


async def test_stale_postmaster_pid_does_not_block_start(short_tmp: Path) -> None:
    """After the postmaster is killed with SIGKILL, start() clears the stale pid file and starts."""
    data_dir = short_tmp / "data"
    cluster = LocalCluster(data_dir)
    dsn = cluster.start()
    await fetch(dsn, "create table survivor as select 7 as n")
    await fetch(dsn, "checkpoint")
    os.kill(_postmaster_pid(data_dir), signal.SIGKILL)
    await eventually(_stopped(cluster), what="the killed postmaster's exit")
    assert (data_dir / "postmaster.pid").exists()

    dsn_after = cluster.start()
    assert await _fetchval(dsn_after, "select n from survivor") == 7
    cluster.stop()


async def test_pid_file_naming_another_live_process_does_not_block_start(
    short_tmp: Path,
) -> None:
    """A stale postmaster.pid whose pid now belongs to another process does not block start."""
    data_dir = short_tmp / "data"
    cluster = LocalCluster(data_dir)
    cluster.start()
    pidfile = (data_dir / "postmaster.pid").read_text().splitlines()
    cluster.stop()
    pidfile[0] = str(os.getpid())  # alive, but not a postmaster for this data dir
    (data_dir / "postmaster.pid").write_text("\n".join(pidfile) + "\n")
    assert not cluster.is_running()

    dsn = cluster.start()
    assert await _fetchval(dsn, "select 1") == 1
    cluster.stop()


async def test_long_data_dir_path_gets_short_socket_dir(short_tmp: Path) -> None:
    """A data dir too long for a unix socket path gets a short socket dir, kept across restarts."""
    data_dir = short_tmp / ("d" * 60) / ("e" * 60) / "data"
    with LocalCluster(data_dir, fast=True) as cluster:
        assert cluster.dsn is not None
        first = cluster.dsn
        socket_dir = first.split("host=", 1)[1].split("&", 1)[0]
        assert len(socket_dir) < 80
        assert not socket_dir.startswith(str(data_dir))
        assert await _fetchval(first, "show fsync") == "off"
    assert not cluster.is_running()
    assert not Path(socket_dir).exists()  # the temporary socket dir is removed on stop
    with LocalCluster(data_dir) as cluster:
        assert cluster.dsn == first
        assert await _fetchval(first, "select 1") == 1


async def test_settings_are_given_to_the_server(short_tmp: Path) -> None:
    """*settings* reach the server's configuration, quoted (a value may hold a quote)."""
    settings = {"work_mem": "12345kB", "application_name": "it's the bench"}
    with LocalCluster(short_tmp / "data", fast=True, settings=settings) as cluster:
        assert cluster.dsn is not None
        assert await _fetchval(cluster.dsn, "show work_mem") == "12345kB"
        assert await _fetchval(cluster.dsn, "show fsync") == "off"
        conf = (short_tmp / "data" / "trs_aggregator.conf").read_text()
        assert "application_name = 'it''s the bench'" in conf


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to 'postgres'")
def test_root_reports_unreachable_data_dir(short_tmp: Path) -> None:
    """As root, a data dir the postgres user cannot traverse to is a clear error."""
    private = short_tmp / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ClusterError, match=r"cannot reach .*private.* is not searchable"):
        LocalCluster(private / "data").start()
