"""The API on every core: one process per CPU sharing the port, under one supervising process.

``serve_processes`` binds one listening socket per API process to the same address with
``SO_REUSEPORT`` (the kernel spreads connections over them), forks the API processes — each
with its own event loop (uvloop where installed), database pool, response cache and catalogue
listener, so every one of them drops its cache on the catalogue notification — and supervises
them: it logs ``api_listening`` once all of them accept connections, stops them all on SIGINT or
SIGTERM (SIGTERM to each, SIGKILL after ``STOP_TIMEOUT_S``), and stops everything with exit
status 1 when one of them dies on its own (the process manager restarts the service). With
``harvest`` the supervising process also runs the harvest scheduler, as ``run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web

from aggregator.api.fastpath import FastRunner
from aggregator.app import create_app
from aggregator.config import Config
from aggregator.db.pool import create_pool
from aggregator.errors import ConfigError
from aggregator.service import (
    check_schema,
    hold_stop_signals,
    release_stop_signals,
    serve_forever,
    wait_for_signal,
)

log = structlog.get_logger()

T = TypeVar("T")

STOP_TIMEOUT_S: Final = 30.0
READY_TIMEOUT_S: Final = 120.0
_POLL_S: Final = 0.2
_BACKLOG: Final = 1024
#: prctl(2)'s request for a signal on the parent's death (linux/prctl.h).
_PR_SET_PDEATHSIG: Final = 1


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def api_processes(config: Config, override: int | None = None) -> int:
    """How many API processes to run: *override* (``--workers``), else ``server.workers``,
    where 0 means one per CPU."""
    n = override if override is not None else config.server.workers
    if n < 0:
        raise ConfigError("--workers", "must be 0 (one per CPU) or more")
    return n if n > 0 else cpu_count()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* to completion on a new event loop: uvloop's where it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop  # noqa: PLC0415 - optional off Linux

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """*n* listening TCP sockets on one address (port 0: one free port for all of them)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            address = sock.getsockname()  # the port chosen for the first one
            sock.listen(_BACKLOG)
            sock.setblocking(False)  # noqa: FBT003 - the socket API
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _schema_ok(config: Config) -> None:
    pool = await create_pool(config.database)
    try:
        await check_schema(pool)
    finally:
        await pool.close()


async def api_process(config: Config, sock: socket.socket, ready: int) -> int:
    """One API process: serve on *sock* until SIGTERM; write a byte to *ready* once listening.

    SIGINT is ignored: the supervisor, which a terminal's Ctrl-C reaches too, sends SIGTERM.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    release_stop_signals()
    runner = FastRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=_BACKLOG).start()
        os.write(ready, b".")
        os.close(ready)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def _end_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent (the supervisor) dies, even
    by SIGKILL, so no API process outlives it holding the port; exit at once if it already
    has. Linux only (prctl); elsewhere the processes end when the supervisor stops them."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            # the process's own symbols, libc's among them: no library search at start-up
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was in place
        os._exit(1)


def _child(
    config: Config, sock: socket.socket, others: list[socket.socket], ready: int, parent: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent)  # SIGTERM is held until api_process handles it
    status = 1
    try:
        for other in others:
            if other is not sock:
                other.close()
        status = run_loop(api_process(config, sock, ready))
    except BaseException:  # whatever it was: say so, and leave
        log.exception("api_process_failed", pid=os.getpid())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class _Children:
    """The forked API processes, reaped as they exit."""

    def __init__(self, pids: list[int]) -> None:
        self.live = set(pids)
        self.failed: dict[int, int] = {}
        self.stopping = False

    def reap(self) -> None:
        for pid in list(self.live):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                done, status = pid, 0
            if done == 0:
                continue
            self.live.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if not self.stopping or code not in (0, -signal.SIGTERM):
                self.failed[pid] = code
                log.error("api_process_exited", pid=pid, exit_code=code)

    async def watch(self) -> None:
        """Return when one exits while not stopping."""
        while not self.failed:
            await asyncio.sleep(_POLL_S)
            self.reap()

    async def ready(self, fd: int, n: int) -> bool:
        """Wait until *n* bytes arrive on *fd* (each process writes one once listening);
        False if a process dies first."""
        loop = asyncio.get_running_loop()
        got = 0
        done = asyncio.Event()

        def readable() -> None:
            nonlocal got
            data = os.read(fd, 64)
            got += len(data)
            if got >= n or not data:
                done.set()

        loop.add_reader(fd, readable)
        try:
            watch = asyncio.create_task(self.watch())
            waiting = asyncio.create_task(done.wait())
            try:
                await asyncio.wait(
                    {watch, waiting}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (watch, waiting):
                    task.cancel()
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return got >= n and not self.failed

    async def stop(self) -> None:
        """SIGTERM each live process; SIGKILL those still there after STOP_TIMEOUT_S."""
        self.stopping = True
        for pid in self.live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_S
        while self.live and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_POLL_S / 4)
            self.reap()
        for pid in self.live:
            log.warning("api_process_killed", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # noqa: ASYNC222 - it was just killed: returns at once
        self.live.clear()


async def _supervise(
    config: Config,
    children: _Children,
    ready: int,
    url: str,
    *,
    harvest: bool,
    on_ready: Callable[[str], None] | None,
) -> int:
    status = 0
    try:
        if not await children.ready(ready, len(children.live)):
            log.error("api_processes_not_started", failed=children.failed)
            return 1
        log.info("api_listening", url=url, processes=len(children.live))
        if on_ready is not None:
            on_ready(url)

        async def on_failure() -> None:
            await children.watch()
            os.kill(os.getpid(), signal.SIGTERM)  # stops the wait below, as an operator would

        watch = asyncio.create_task(on_failure())
        try:
            if harvest:
                status = await serve_forever(config, api=False, worker=True)
            else:
                await wait_for_signal()
        finally:
            watch.cancel()
    finally:
        await children.stop()
    return 1 if children.failed else status


def serve_processes(
    config: Config,
    processes: int,
    *,
    harvest: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve the API from *processes* forked processes on one port until SIGINT or SIGTERM
    (and run the harvest scheduler in this one with *harvest*); the exit status."""
    run_loop(_schema_ok(config))
    sockets = reuseport_sockets(config.server.host, config.server.port, processes)
    url = _url(sockets[0])
    ready_read, ready_write = os.pipe()
    pids: list[int] = []
    # Until this process and each child have their handlers, a stop signal waits for them.
    hold_stop_signals()
    sys.stdout.flush()
    sys.stderr.flush()
    supervisor = os.getpid()
    try:
        for sock in sockets:
            pid = os.fork()
            if pid == 0:
                os.close(ready_read)
                _child(config, sock, sockets, ready_write, supervisor)
            pids.append(pid)
    except BaseException:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(ready_read)
        raise
    finally:
        for sock in sockets:
            sock.close()
        os.close(ready_write)
    children = _Children(pids)
    return run_loop(
        _supervise(config, children, ready_read, url, harvest=harvest, on_ready=on_ready)
    )
