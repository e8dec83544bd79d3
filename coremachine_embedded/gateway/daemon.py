"""The gateway daemon: follows a fleet of devices live, writes its own local
machines, serves every store on its ``listen`` URLs, and hands changes to
the MQTT bridge and the metrics.

DEV NOTES.  One asyncio loop.  Each device has a task that opens its replica
(retrying with backoff: a store can be locked or a disk full for a while),
then pulls over its URLs in turn: a URL that cannot be opened is retried
after a backoff delay, and one that stays silent for ``silence`` seconds makes
the device try the next (when it has several).  Links are pooled
(links.py): every ``udp://`` device shares one socket and one Endpoint.  A
supervisor pass every second reads each device's pulling status (contact,
remote length) and flushes the replicas that changed, in a worker thread:
replicas are opened with durability "none" and made durable by that one
group commit, rather than a timer thread per core.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import sync
from ..errors import ClosedError, CoreMachineError
from .config import GatewayConfig
from .links import LinkPool, PooledLink, StreamPull
from .members import Device, Local, Member, forget_definitions

log = logging.getLogger("coremachine_embedded.gateway")

SUPERVISE_PERIOD = 1.0   # seconds between status passes
PING_AT = 0.3            # ping a device quiet for this fraction of the silence limit
CATCHING_UP = 32         # devices catching up at once, at most...
CATCH_UP_WAIT = 10.0     # ...each for this long at most (a silent one lets the next go)
OPEN_ERRORS = (CoreMachineError, OSError, ValueError, ImportError)


class Gateway:
    """One process following a fleet (see the module docstring).

    ``await start()``, then ``await reload(new_config)`` any number of times,
    then ``await stop()``.  :meth:`on_change` registers a listener called for
    every member whose log changed (the MQTT bridge, tests, the benchmark's
    probe).
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.devices: Dict[str, Device] = {}
        self.locals: Dict[str, Local] = {}
        self.links = LinkPool()
        self.listening: List[PooledLink] = []
        self.started = time.time()
        self.bridge: Any = None              # the MQTT bridge, when one runs
        self._listeners: List[Callable[[Member], None]] = []
        self._member_listeners: List[Callable[[Member, bool], None]] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._supervisor: Optional["asyncio.Task[None]"] = None
        self._catching_up = asyncio.Semaphore(CATCHING_UP)
        self._flushing = False

    # --- lifetime ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the listen links and every member; devices start pulling."""
        self._loop = asyncio.get_running_loop()
        for url in self.config.listen:
            link, _ = sync.open_link(url, listen=True)
            endpoint = sync.Endpoint()
            await endpoint.attach(link)
            self.listening.append(PooledLink("listen " + url.split("?", 1)[0], link, endpoint))
            log.info("serving on %s", url)
        for local in self.config.locals:
            self._add(Local(local, self._loop, self._listeners))
        for device in self.config.devices:
            self._add(Device(device, self._loop, self._listeners))
        self._supervisor = self._loop.create_task(self._supervise())
        log.info("gateway %s: %d devices, %d local machines", self.config.name,
                 len(self.devices), len(self.locals))

    async def stop(self) -> None:
        """Stop pulling and serving, flush and close every store."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._remove(list(self.locals.values()) + list(self.devices.values()))
        for pooled in self.listening:
            await pooled.endpoint.close()
        self.listening = []
        await self.links.close()
        log.info("gateway %s stopped", self.config.name)

    async def reload(self, config: GatewayConfig) -> None:
        """Apply a new configuration: members added, removed or changed are
        started, stopped or restarted; the others keep running untouched.
        ``listen`` and the metrics address take effect at the next start."""
        old = self.config
        if config.listen != old.listen:
            log.warning("listen changed: it takes effect when the gateway restarts")
        self.config = config
        forget_definitions()
        new_devices = {d.name: d for d in config.devices}
        new_locals = {m.name: m for m in config.locals}
        await self._remove([d for d in self.devices.values() if new_devices.get(d.name) != d.config]
                           + [m for m in self.locals.values()
                              if new_locals.get(m.name) != m.config])
        added = 0
        for name, lcfg in new_locals.items():
            if name not in self.locals:
                self._add(Local(lcfg, self._loop_now(), self._listeners))
                added += 1
        for name, dcfg in new_devices.items():
            if name not in self.devices:
                self._add(Device(dcfg, self._loop_now(), self._listeners))
                added += 1
        log.info("reloaded %s: %d devices, %d local machines (%d started)", config.path,
                 len(self.devices), len(self.locals), added)

    # --- listeners ----------------------------------------------------------------

    def on_change(self, listener: Callable[[Member], None]) -> Callable[[], None]:
        """``listener(member)`` after a member's log changed (coalesced, in the
        loop's thread), members added later included.  Returns a remover."""
        return _add(self._listeners, listener)

    def on_members(self, listener: Callable[[Member, bool], None]) -> Callable[[], None]:
        """``listener(member, added)`` when a member opens (True) or goes
        (False).  Returns a remover."""
        return _add(self._member_listeners, listener)

    def members(self) -> List[Member]:
        return [*self.locals.values(), *self.devices.values()]

    def _announce(self, member: Member, added: bool) -> None:
        for listener in list(self._member_listeners):
            try:
                listener(member, added)
            except Exception:
                log.exception("%s: member listener failed", member.name)

    # --- members ---------------------------------------------------------------------

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _add(self, member: Member) -> None:
        """Start a member: its task opens the store, then serves it (and a
        device's pulls it)."""
        if isinstance(member, Device):
            self.devices[member.name] = member
            member.task = self._loop_now().create_task(self._run_device(member))
        else:
            assert isinstance(member, Local)
            self.locals[member.name] = member
            member.task = self._loop_now().create_task(self._run_local(member))

    async def _remove(self, members: List[Member]) -> None:
        """Stop members: cancel their tasks, stop serving them, close their
        stores (in worker threads, all at once: closing flushes and folds the
        write-ahead log, a few fsyncs each)."""
        for member in members:
            if isinstance(member, Device):
                del self.devices[member.name]
            else:
                del self.locals[member.name]
        tasks = [m.task for m in members if m.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in members:
            if member.core is not None:
                self._unserve(member)
                self._announce(member, False)
        loop = self._loop_now()
        await asyncio.gather(*(loop.run_in_executor(None, m.close) for m in members))
        for member in members:
            log.info("%s %s closed", member.kind, member.name)

    async def _open(self, member: Member) -> None:
        """Open the member's store, retrying with backoff (a store can be locked
        by another process, or a disk full, for a while).  In a worker thread:
        creating a store takes a few fsyncs, and a thousand of them must not
        stop the loop."""
        cfg = self.config
        delay = cfg.retry_min
        while True:
            opening = self._loop_now().run_in_executor(None, member.open)
            try:
                await asyncio.shield(opening)
            except asyncio.CancelledError:
                await asyncio.wait([opening])   # so that close() finds what it opened
                raise
            except OPEN_ERRORS as e:
                member.error = str(e)
                log.error("%s %s: %s (retrying in %.0f s)", member.kind, member.name, e, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, cfg.retry_max)
                continue
            member.error = None
            assert member.core is not None
            self._serve(member)
            self._announce(member, True)
            return

    async def _run_local(self, local: Local) -> None:
        await self._open(local)
        assert local.core is not None
        log.info("local %s: %s, length %d, state %s", local.name, local.config.store,
                 local.core.length, local.machine.state)

    async def _run_device(self, dev: Device) -> None:
        """Open the replica, then pull it over its URLs until cancelled."""
        await self._open(dev)
        core = dev.core
        assert core is not None
        log.info("device %s: %s, holds %d entries; following %s", dev.name, dev.config.store,
                 core.contiguous_length, ", ".join(dev.config.urls))
        cfg = self.config
        delay = cfg.retry_min
        turn = 0
        while True:
            url = dev.config.urls[turn % len(dev.config.urls)]
            turn += 1
            try:
                pooled, addr = await self.links.acquire(url)
            except OPEN_ERRORS as e:
                dev.open_failures += 1
                log.warning("device %s: cannot open %s: %s (retrying in %.1f s)", dev.name, url,
                            e, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, cfg.retry_max)
                continue
            dev.link, dev.url, dev.attached_at = pooled, url, time.monotonic()
            dev.pull_task = None
            try:
                async with self._catching_up:
                    dev.attached_at = time.monotonic()
                    dev.pull_task = asyncio.ensure_future(
                        pooled.endpoint.pull(core) if isinstance(pooled.endpoint, StreamPull)
                        else pooled.endpoint.pull(core, pooled.link, addr, live=True))
                    await self._caught_up(dev, pooled)
                await asyncio.wait([dev.pull_task])
            finally:
                if dev.pull_task is not None and not dev.pull_task.done():
                    dev.pull_task.cancel()
                    await asyncio.wait([dev.pull_task])
                pooled.endpoint.remove(core)
                dev.link = None
                if dev.online:
                    dev.online = False
                await self.links.release(pooled)
            assert dev.pull_task is not None
            if dev.pull_task.cancelled():  # the supervisor moves it to its next URL
                delay = cfg.retry_min
                continue
            error = dev.pull_task.exception() or "the connection ended"
            log.error("device %s: pulling over %s failed: %s (retrying in %.1f s)", dev.name,
                      url, error, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, cfg.retry_max)

    async def _caught_up(self, dev: Device, pooled: PooledLink) -> None:
        """Wait until ``dev`` first holds its writer's length (or CATCH_UP_WAIT
        passed, or its pull ended).  Pulls start ``CATCHING_UP`` at a time: a
        thousand devices greeted at once would answer at once and overflow
        the shared socket, and every lost answer is a retry."""
        assert dev.pull_task is not None and dev.core is not None
        deadline = time.monotonic() + CATCH_UP_WAIT
        while not dev.pull_task.done() and time.monotonic() < deadline:
            status = pooled.endpoint.source_status(dev.core)
            if status is not None and status.caught_up:
                return
            await asyncio.sleep(0.02)

    # --- serving ------------------------------------------------------------------------

    def _serve(self, member: Member) -> None:
        assert member.core is not None
        for pooled in self.listening:
            pooled.endpoint.serve(member.core)

    def _unserve(self, member: Member) -> None:
        assert member.core is not None
        for pooled in self.listening:
            pooled.endpoint.remove(member.core)

    # --- the supervisor --------------------------------------------------------------

    async def _supervise(self) -> None:
        flushed = time.monotonic()
        while True:
            await asyncio.sleep(min(SUPERVISE_PERIOD, self.config.silence / 4))
            now = time.monotonic()
            try:
                self.check_contacts(now)
                if now - flushed >= self.config.flush_interval:
                    flushed = now
                    await self._flush_changed()
            except Exception:  # keep supervising whatever one pass hit
                log.exception("supervisor pass failed")

    def check_contacts(self, now: float) -> None:
        """Contact lost or regained per device (logged); a device silent on
        one of several URLs moves to the next."""
        silence = self.config.silence
        for dev in list(self.devices.values()):
            change = dev.refresh(now, silence)
            if change == "lost":
                log.warning("device %s: no answer on %s for %.0f s", dev.name, dev.url,
                            silence)
            elif change == "regained":
                if dev.contacted:
                    dev.reconnects += 1
                    if dev.link is not None:
                        dev.link.contacts_regained += 1
                dev.contacted = True
                log.info("device %s: in contact on %s (holds %d of %d)", dev.name, dev.url,
                         dev.core.contiguous_length if dev.core else 0, dev.remote_length)
            quiet = dev.silent_for(now)
            if (len(dev.config.urls) > 1 and dev.pull_task is not None
                    and not dev.pull_task.done() and quiet > silence):
                log.info("device %s: trying its next URL", dev.name)
                dev.pull_task.cancel()
            elif dev.link is not None and dev.core is not None and quiet > silence * PING_AT \
                    and now - dev.pinged > silence * PING_AT:
                # an idle device sends nothing: ask it for a sign of life
                dev.pinged = now
                dev.link.endpoint.ping(dev.core)

    async def _flush_changed(self) -> None:
        """One group commit for the replicas that stored something."""
        if self._flushing:
            return
        cores = [m.core for m in self.devices.values() if m.take_dirty() and m.core]
        if not cores:
            return
        self._flushing = True
        try:
            loop = asyncio.get_running_loop()
            failures = await loop.run_in_executor(None, _flush_all, cores)
        finally:
            self._flushing = False
        for directory, error in failures:
            log.error("flushing %s: %s", directory, error)


def _add(listeners: List[Any], listener: Any) -> Callable[[], None]:
    listeners.append(listener)

    def remove() -> None:
        if listener in listeners:
            listeners.remove(listener)
    return remove


def _flush_all(cores: List[Any]) -> List[Tuple[str, str]]:
    failures = []
    for core in cores:
        try:
            core.flush()
        except ClosedError:
            pass  # removed by a reload meanwhile: closing flushed it
        except (CoreMachineError, OSError) as e:
            failures.append((core.directory or "?", str(e)))
    return failures
