"""What the gateway holds for each name in its configuration: a followed
device (a verified replica pulled live) or a local machine (a store the
gateway writes), with what metrics and the MQTT bridge read from them."""
from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .. import commands
from ..core import Core, CoreChange
from ..machine import MachineDefinition, create_machine
from .config import DeviceConfig, LocalConfig
from .links import PooledLink

log = logging.getLogger("coremachine_embedded.gateway")

Listener = Callable[["Member"], None]


class Member(abc.ABC):
    """A device or a local machine: its core, its machine definition (if
    known), and change notifications: after the core stored new entries or
    was truncated, each of ``listeners`` is called with the member, in the
    event loop's thread, once for a burst of changes."""

    kind = "member"

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop,
                 listeners: List[Listener]) -> None:
        self.name = name
        self.core: Optional[Core] = None
        self.definition: Optional[MachineDefinition] = None
        self.machine_ref: Optional[str] = None
        self.error: Optional[str] = None     # why it is not running, if it is not
        self.task: Optional["asyncio.Task[None]"] = None   # opens it (and pulls a device)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._listeners = listeners          # the gateway's: shared by every member
        self._pending = False
        self._dirty = False                  # stored something since take_dirty()
        self._unsubscribe: Optional[Callable[[], None]] = None

    @abc.abstractmethod
    def open(self) -> None:
        """Open the store (and load the machine); raises what opening raised."""

    def attach(self, core: Core) -> None:
        """Start notifying listeners about ``core``'s changes."""
        self.core = core
        self._unsubscribe = core.on_change(self._changed)

    def take_dirty(self) -> bool:
        """Did the core change since the last call?"""
        dirty, self._dirty = self._dirty, False
        return dirty

    def _changed(self, change: CoreChange) -> None:
        self._dirty = True
        if self._pending or not self._listeners:
            return
        self._pending = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._deliver)
        else:
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._pending = False
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a listener's bug must not stop the others
                log.exception("%s: change listener failed", self.name)

    def close(self) -> None:
        """Stop notifying, flush and close the core."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.core is not None:
            core, self.core = self.core, None
            try:
                core.close()
            except Exception as e:  # closing flushes: report a failing disk, go on
                log.error("%s: closing %s: %s", self.name, core.directory, e)


class Device(Member):
    """A followed device: a read-only replica pulled live over its URLs."""

    kind = "device"

    def __init__(self, config: DeviceConfig, loop: asyncio.AbstractEventLoop,
                 listeners: List[Listener]) -> None:
        super().__init__(config.name, loop, listeners)
        self.config = config
        self.machine_ref = config.machine
        self.pull_task: Optional["asyncio.Future[None]"] = None   # the live pull, once started
        self.link: Optional[PooledLink] = None
        self.url: Optional[str] = None
        self.attached_at = 0.0             # monotonic: when pulling over this URL began
        self.last_seen: Optional[float] = None   # monotonic time of the source's last envelope
        self.last_contact = 0.0            # the same as a Unix time (0: never)
        self.online = False
        self.contacted = False             # was in contact at least once
        self.pinged = 0.0                  # monotonic: when it was last asked for a sign of life
        self.remote_length = -1            # the writer's signed length, as last heard
        self.remote_fork = -1
        self.reconnects = 0                # contact regained after a silence
        self.open_failures = 0             # URLs that could not be opened

    def open(self) -> None:
        """Open (or create) the replica and load the machine definition."""
        if self.config.machine is not None:
            self.definition = load_definition(self.config.machine)
        self.attach(Core(self.config.store, key=self.config.key, durability="none"))

    def read_status(self, now: float) -> None:
        """Take the pulling status from the endpoint (remote length, contact)."""
        if self.link is None or self.core is None:
            return
        status = self.link.endpoint.source_status(self.core)
        if status is None:
            return
        if status.length >= 0:
            self.remote_length, self.remote_fork = status.length, status.fork
        if status.last_seen is not None and status.last_seen != self.last_seen:
            self.last_seen = status.last_seen
            self.last_contact = time.time() - (now - status.last_seen)

    def refresh(self, now: float, silence: float) -> Optional[str]:
        """Read the status; returns "lost" or "regained" when contact changed
        (heard within ``silence`` seconds or not), else None."""
        self.read_status(now)
        online = self.link is not None and self.last_seen is not None and \
            now - self.last_seen < silence
        if online == self.online:
            return None
        self.online = online
        return "regained" if online else "lost"

    def silent_for(self, now: float) -> float:
        """Seconds since the source was heard (or since pulling over this URL began)."""
        heard = max(self.last_seen or 0.0, self.attached_at)
        return now - heard

    @property
    def lag(self) -> int:
        """Blocks the writer has signed that this replica does not hold (0 if unknown)."""
        if self.core is None or self.remote_length < 0:
            return 0
        return max(0, self.remote_length - self.core.contiguous_length)


class Local(Member):
    """A machine the gateway writes (its store made by ``coremachine init``)."""

    kind = "local"

    def __init__(self, config: LocalConfig, loop: asyncio.AbstractEventLoop,
                 listeners: List[Listener]) -> None:
        super().__init__(config.name, loop, listeners)
        self.config = config
        self.machine: Any = None      # the Coremachine

    def open(self) -> None:
        from ..coremachine import Coremachine
        core = commands.open_store(self.config.store)
        try:
            self.machine_ref = self.config.machine or commands.read_meta(
                self.config.store).get("machine")
            if not self.machine_ref:
                raise commands.CommandError("%s has no machine: give machine = \"MOD:ATTR\""
                                            % self.config.store)
            self.definition = load_definition(self.machine_ref)
            self.machine = Coremachine(core, self.definition)
        except BaseException:
            core.close()
            raise
        self.attach(core)

    def allows(self, event: str) -> bool:
        """May an action with ``event`` come from MQTT?"""
        return "*" in self.config.actions or event in self.config.actions

    def close(self) -> None:
        if self.machine is not None:
            self.machine.close()
            self.machine = None
        super().close()


_definitions: Dict[str, MachineDefinition] = {}


def forget_definitions() -> None:
    """Import machine modules again on the next load (a reload: they may have changed)."""
    _definitions.clear()


def load_definition(ref: str) -> MachineDefinition:
    """The compiled machine ``MOD:ATTR`` (compiled once per process)."""
    definition = _definitions.get(ref)
    if definition is None:
        definition = _definitions[ref] = create_machine(commands.load_machine(ref))
    return definition
