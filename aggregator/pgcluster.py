"""A private PostgreSQL cluster in a data directory, for the demo command and the test suite."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

__all__ = [
    "ClusterError",
    "LocalCluster",
    "PgBinariesNotFound",
    "find_pg_bindir",
    "server_can_reach",
    "shared_data_dir",
]

INSTALL_HINT = (
    "Install the PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql; "
    "Fedora/RHEL: dnf install postgresql-server; macOS: brew install postgresql@16), "
    "or point AGGREGATOR_PG_BINDIR at the directory holding initdb and pg_ctl."
)

#: Where PostgreSQL server binaries are commonly installed, searched after $PATH.
CANDIDATE_BINDIR_GLOBS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL, Fedora (PGDG packages)
    "/usr/lib64/pgsql*/bin",
    "/opt/homebrew/opt/postgresql*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql*/bin",  # Homebrew, Intel
    "/opt/local/lib/postgresql*/bin",  # MacPorts
    "/Applications/Postgres.app/Contents/Versions/*/bin",
    "/usr/local/pgsql/bin",  # built from source
)

#: The database superuser created by initdb; clients connect as this role.
SUPERUSER = "postgres"
#: The system account the server runs as when we are root.
SERVER_OS_USER = "postgres"

_CONF_NAME = "trs_aggregator.conf"
_LOG_NAME = "server.log"
_SOCKET_PREFIX = "trsagg-"
# sizeof(sockaddr_un.sun_path) is 108 on Linux and 104 on macOS, including the NUL byte,
# and the server also creates ".s.PGSQL.<port>.lock" beside the socket.
_MAX_SOCKET_DIR_LEN = 103 - len("/.s.PGSQL.65535.lock")
_SHORT_TMP_DIRS = ("/tmp", "/var/tmp")


class PgBinariesNotFound(Exception):
    """Raised when no PostgreSQL server binaries (initdb, pg_ctl) can be found."""


class ClusterError(RuntimeError):
    """Raised when the local cluster cannot be initialised, started or stopped."""


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_pg_bindir(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the directory holding PostgreSQL's ``initdb`` and ``pg_ctl``.

    Looks at ``$AGGREGATOR_PG_BINDIR``, then the directory of ``pg_ctl`` on ``$PATH``
    (if ``initdb`` is beside it), then the newest of the usual install locations.
    Raises :class:`PgBinariesNotFound` when none has both programs.
    """
    override = environ.get("AGGREGATOR_PG_BINDIR", "").strip()
    if override:
        directory = Path(override).expanduser()
        if _has_server_binaries(directory):
            return directory
        raise PgBinariesNotFound(
            f"AGGREGATOR_PG_BINDIR={override!r} does not contain initdb and pg_ctl. " + INSTALL_HINT
        )
    pg_ctl = shutil.which("pg_ctl", path=environ.get("PATH", ""))
    if pg_ctl is not None:
        on_path = Path(pg_ctl).parent
        if _has_server_binaries(on_path):
            # Prefer the real install directory when PATH holds symlinks to it.
            resolved = Path(pg_ctl).resolve().parent
            return resolved if _has_server_binaries(resolved) else on_path
    candidates: list[str] = []
    for pattern in CANDIDATE_BINDIR_GLOBS:
        candidates.extend(glob.glob(pattern))
    for candidate in sorted(set(candidates), key=_version_key, reverse=True):
        if _has_server_binaries(Path(candidate)):
            return Path(candidate)
    raise PgBinariesNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in "
        "/usr/lib/postgresql/*/bin and the other usual places. " + INSTALL_HINT
    )


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _may_search(st: os.stat_result, user: _OsUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def server_can_reach(path: Path) -> bool:
    """Whether the server could enter *path* (or the part of it that exists yet): always when
    it runs as ourselves; as root it runs as ``postgres``, which must be able to search every
    ancestor (a private home such as ``/root`` is not)."""
    owner = LocalCluster._server_user()  # noqa: SLF001 - this module's own class
    if owner is None:
        return True
    target = Path(os.path.abspath(path))
    for directory in [*reversed(target.parents), target]:
        try:
            st = directory.stat()
        except OSError:
            return True  # the rest is created by us, for the server
        if not _may_search(st, owner):
            return False
    return True


def shared_data_dir(preferred: Path, *, root: Path = Path("/var/tmp")) -> Path:
    """A directory for a cluster meant to live at *preferred*, under *root* (world-traversable,
    kept across reboots), named after *preferred* so the next run finds it again.

    The directory is created for us alone (mode 0755, owned by root); one that exists must be a
    real directory owned by root, or it is refused.
    """
    digest = hashlib.sha256(str(Path(os.path.abspath(preferred))).encode()).hexdigest()[:12]
    home = root / f"trs-aggregator-{digest}"
    try:
        home.mkdir(mode=0o755)
    except FileExistsError:
        st = home.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ClusterError(
                f"{home} exists but is not a directory of ours; remove it or pass --data-dir"
            ) from None
    home.chmod(0o755)
    return home / preferred.name


@dataclass
class LocalCluster:
    """A PostgreSQL cluster owned by this process, living in ``data_dir``.

    The server listens on a unix socket only (no TCP), trusts local connections and
    logs to ``server.log`` in the data directory.  ``fast=True`` turns off durability
    (fsync, synchronous commit, full page writes) for throwaway test clusters; *settings*
    are further server settings (name to value, as ``postgresql.conf`` spells them).
    """

    data_dir: Path
    fast: bool = False
    bindir: Path | None = None
    timeout: float = 60.0
    settings: dict[str, str] = field(default_factory=dict)
    dsn: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(os.path.abspath(Path(self.data_dir).expanduser()))

    # -- public API ---------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.data_dir / _LOG_NAME

    @property
    def initialized(self) -> bool:
        """Whether ``data_dir`` already holds a cluster."""
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """Whether a postmaster is serving ``data_dir`` right now."""
        return self._running_pid() is not None

    def start(self) -> str:
        """Create the cluster if needed, start it unless running, and return its DSN."""
        bindir = self.binaries()
        owner = self._server_user()
        self._prepare_data_dir(owner, bindir)
        if not self.initialized:
            self._initdb(bindir, owner)
        if self._running_pid() is None:
            self._clear_stale_state()
            socket_dir = self._socket_dir(owner)
            port = self._remembered_port() or _free_port()
            self._write_conf(socket_dir, port, owner)
            self._pg_ctl_start(bindir, owner)
        self.dsn = self._dsn_from_pidfile()
        return self.dsn

    def stop(self) -> None:
        """Stop the server (fast shutdown); do nothing if it is not running."""
        if self.initialized and self._running_pid() is not None:
            result = self._run(
                [
                    str(self.binaries() / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(self.timeout)),
                ],
                self._server_user(),
            )
            if result.returncode != 0 and self._running_pid() is not None:
                raise ClusterError(
                    f"pg_ctl stop failed for {self.data_dir}:\n{result.stdout}{result.stderr}"
                )
        self._remove_temp_socket_dir()
        self.dsn = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- processes ----------------------------------------------------------------------

    def binaries(self) -> Path:
        """The directory of the server binaries this cluster runs (found on first use)."""
        if self.bindir is None:
            self.bindir = find_pg_bindir()
        return self.bindir

    @staticmethod
    def _server_user() -> _OsUser | None:
        """The account to run the server as, or None to run it as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise ClusterError(
                "PostgreSQL refuses to run as root, and there is no "
                f"'{SERVER_OS_USER}' system user to run it as. Install the server package "
                "(apt-get install postgresql creates that user) or run as a non-root user."
            ) from None
        return _OsUser(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            home=entry.pw_dir,
        )

    @staticmethod
    def _env(owner: _OsUser | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if owner is not None:
            env.update(HOME=owner.home, USER=owner.name, LOGNAME=owner.name)
        return env

    def _run(
        self, args: Sequence[str], owner: _OsUser | None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        as_owner: dict[str, Any] = {}
        if owner is not None:
            as_owner = {"user": owner.uid, "group": owner.gid, "extra_groups": list(owner.groups)}
        return subprocess.run(
            list(args),
            cwd="/",  # the server account may not be able to enter our working directory
            env=self._env(owner),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout + 30,
            check=False,
            **as_owner,
        )

    # -- data directory -----------------------------------------------------------------

    def _prepare_data_dir(self, owner: _OsUser | None, bindir: Path) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if owner is None:
            return
        st = self.data_dir.stat()
        if self.initialized:
            if st.st_uid != owner.uid:
                raise ClusterError(
                    f"{self.data_dir} holds a cluster owned by uid {st.st_uid}, but as root "
                    f"the server must run as '{owner.name}' (uid {owner.uid}). "
                    f"Fix with: chown -R {owner.name} {self.data_dir}"
                )
        else:
            os.chown(self.data_dir, owner.uid, owner.gid)
            os.chmod(self.data_dir, 0o700)
        self._check_reachable(owner, self.data_dir)
        self._check_reachable(owner, bindir / "pg_ctl")

    def _check_reachable(self, owner: _OsUser, path: Path) -> None:
        probe = self._run(["/bin/sh", "-c", 'test -x "$1"', "sh", str(path)], owner, timeout=30)
        if probe.returncode == 0:
            return
        blocker = path
        for ancestor in reversed(path.parents):
            try:
                if not _may_search(ancestor.stat(), owner):
                    blocker = ancestor
                    break
            except OSError:
                break
        raise ClusterError(
            f"PostgreSQL refuses to run as root, so it runs as the '{owner.name}' user, but "
            f"'{owner.name}' cannot reach {path} ({blocker} is not searchable by it). "
            "Use a data directory under a world-traversable location such as /tmp or "
            f"/var/tmp, or grant access, e.g. chmod o+x {blocker}"
        )

    def _initdb(self, bindir: Path, owner: _OsUser | None) -> None:
        if any(self.data_dir.iterdir()):
            raise ClusterError(
                f"{self.data_dir} is not empty and holds no PostgreSQL cluster (no PG_VERSION); "
                "refusing to initialise a cluster there"
            )
        args = [
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast:
            args.append("--no-sync")
        result = self._run(args, owner)
        if result.returncode != 0:
            raise ClusterError(
                f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}"
            )
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# Socket, port and speed settings written by trs-aggregator at each start.\n"
                f"include_if_exists = {_conf_quote(_CONF_NAME)}\n"
            )

    def _conf_value(self, name: str) -> str | None:
        try:
            text = (self.data_dir / _CONF_NAME).read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(rf"^{name} = (.*)$", text, re.MULTILINE)
        if match is None:
            return None
        value = match.group(1).strip()
        if value.startswith("'") and value.endswith("'"):
            value = value[1:-1].replace("''", "'").replace("\\\\", "\\")
        return value

    def _remembered_port(self) -> int | None:
        value = self._conf_value("port")
        return int(value) if value and value.isdigit() else None

    def _write_conf(self, socket_dir: Path, port: int, owner: _OsUser | None) -> None:
        lines = [
            "# Managed by trs-aggregator (aggregator.pgcluster); rewritten at every start.",
            "listen_addresses = ''",
            f"port = {port}",
            f"unix_socket_directories = {_conf_quote(str(socket_dir))}",
            "unix_socket_permissions = 0700",
        ]
        if self.fast:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        lines += [f"{name} = {_conf_quote(value)}" for name, value in self.settings.items()]
        path = self.data_dir / _CONF_NAME
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)

    # -- socket directory ---------------------------------------------------------------

    def _socket_dir(self, owner: _OsUser | None) -> Path:
        """Pick the directory for the unix socket; reuse the remembered one if possible."""
        uid = owner.uid if owner is not None else os.geteuid()
        remembered = self._conf_value("unix_socket_directories")
        if remembered:
            path = Path(remembered)
            if path == self.data_dir:
                return path
            if path.name.startswith(_SOCKET_PREFIX) and len(str(path)) <= _MAX_SOCKET_DIR_LEN:
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    try:
                        path.mkdir(mode=0o700)
                    except OSError:
                        pass
                    else:
                        self._own(path, owner)
                        return path
                else:
                    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                        return path
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR_LEN:
            return self.data_dir
        for base in (*_SHORT_TMP_DIRS, tempfile.gettempdir()):
            if os.path.isdir(base) and len(base) + len(_SOCKET_PREFIX) + 9 <= _MAX_SOCKET_DIR_LEN:
                path = Path(tempfile.mkdtemp(prefix=_SOCKET_PREFIX, dir=base))
                self._own(path, owner)
                return path
        raise ClusterError(
            "no directory with a path short enough for a unix socket was found "
            f"(at most {_MAX_SOCKET_DIR_LEN} characters)"
        )

    @staticmethod
    def _own(path: Path, owner: _OsUser | None) -> None:
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)

    def _remove_temp_socket_dir(self) -> None:
        remembered = self._conf_value("unix_socket_directories")
        if remembered and Path(remembered).name.startswith(_SOCKET_PREFIX):
            path = Path(remembered)
            if path != self.data_dir:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty, i.e. the server removed its socket

    # -- server state -------------------------------------------------------------------

    def _pidfile_lines(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []

    def _running_pid(self) -> int | None:
        """The postmaster's pid if it is alive and serving our data directory."""
        lines = self._pidfile_lines()
        if not lines or not lines[0].strip().lstrip("-").isdigit():
            return None
        pid = abs(int(lines[0].strip()))
        if pid == 0 or not _pid_exists(pid):
            return None
        proc = Path(f"/proc/{pid}")
        if sys.platform.startswith("linux") and proc.is_dir():
            # A pid in a stale pidfile may have been reused (or be a zombie): the
            # postmaster's working directory is always its data directory.
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                return None
            return pid if os.path.realpath(cwd) == os.path.realpath(self.data_dir) else None
        return pid

    def _stray_server_pids(self) -> list[int]:
        """Leftover children of a killed postmaster that still use our data directory."""
        if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
            return []
        target = os.path.realpath(self.data_dir)
        pids: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if exe in ("postgres", "postmaster") and os.path.realpath(cwd) == target:
                pids.append(int(entry))
        return pids

    def _clear_stale_state(self) -> None:
        """Remove what a killed server left behind, so that a new one can start."""
        lines = self._pidfile_lines()
        if len(lines) >= 5 and lines[3].strip().isdigit() and lines[4].strip():
            socket_dir = Path(lines[4].strip())
            # Only in our own socket directories: a shared one (/var/run/postgresql) may
            # hold another live server's socket under the same name.
            if socket_dir == self.data_dir or socket_dir.name.startswith(_SOCKET_PREFIX):
                stale_socket = socket_dir / f".s.PGSQL.{lines[3].strip()}"
                for leftover in (stale_socket, Path(f"{stale_socket}.lock")):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "postmaster.pid").unlink()
        # Orphaned backends exit on their own once they notice the postmaster died; while
        # they live, they hold shared memory and a new postmaster refuses to start.
        deadline = time.monotonic() + 10
        while (strays := self._stray_server_pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _pg_ctl_start(self, bindir: Path, owner: _OsUser | None) -> None:
        args = [
            str(bindir / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(int(self.timeout)),
        ]
        result = self._run(args, owner)
        if result.returncode != 0 or self._running_pid() is None:
            raise ClusterError(
                f"could not start PostgreSQL in {self.data_dir}:\n{result.stdout}{result.stderr}"
                f"\n--- last lines of {self.log_file} ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _dsn_from_pidfile(self) -> str:
        lines = self._pidfile_lines()
        if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
            raise ClusterError(
                f"the server for {self.data_dir} is running but listens on no unix socket"
            )
        port = int(lines[3].strip())
        socket_dir = lines[4].strip()
        return f"postgresql://{SUPERUSER}@/postgres?host={quote(socket_dir, safe='/')}&port={port}"
