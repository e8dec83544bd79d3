"""The long-running commands of ``coremachine``: ``serve`` and ``pull``.

Both stop cleanly on SIGTERM (what systemd sends) and SIGINT: they flush the
store, print their counters and exit 0 (a pull that Ctrl-C stopped before it
caught up exits 130).  A pull without ``--live`` gives up after a timeout and
says whether any peer answered for the key.  A replica folder that a pull
creates is bound to the key only once something verified arrived: a pull that
got nothing removes the folder again, and a pull finds an empty replica left
bound to another key (e.g. by a killed pull) and starts it afresh.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

from .commands import (DEFAULT_PULL_TIMEOUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT,
                       CommandError, open_store, read_meta)
from .core import Core
from .errors import FILE_NAMES, KeyMismatchError, StoreNotFoundError

if TYPE_CHECKING:
    from .sync import Counters


def print_counters(counters: Dict[str, int], stream: Any = None) -> None:
    stream = stream or sys.stderr
    stream.write(" ".join("%s=%d" % kv for kv in sorted(counters.items())) or "no traffic")
    stream.write("\n")
    stream.flush()


def check_device(url: str, wait: bool) -> None:
    """A serial URL's device must exist (and be usable) unless ``wait``: the link
    itself would retry forever, which hides a mistyped path."""
    parts = urlsplit(url)
    if parts.scheme != "serial":
        return
    path = unquote(parts.netloc + parts.path)
    if not os.path.exists(path):
        if wait:
            print("waiting for %s to appear" % path, file=sys.stderr, flush=True)
            return
        raise CommandError("no serial device %s (check the path; --wait-for-device waits "
                           "for it to appear)" % path)
    if not os.access(path, os.R_OK | os.W_OK):
        raise CommandError("cannot open %s: permission denied (add the user to the group "
                           "that owns it, usually dialout)" % path)


class Stop:
    """Set by SIGTERM, SIGINT (remembered in ``signal``) or a ``coremachine stop``
    (from the control socket's thread)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal: Optional[int] = None
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._set, sig)

    def _set(self, sig: Optional[int]) -> None:
        self.signal = sig
        self.event.set()

    def request(self) -> None:
        """Thread-safe: stop as SIGTERM would."""
        self._loop.call_soon_threadsafe(self._set, signal.SIGTERM)


def _one_machine(core: Core, store: str) -> Callable[[Optional[str]], Any]:
    """``machine_for`` of a serve's control socket: one Coremachine on the core,
    made on the first ``act`` (from its --machine, or the store's)."""
    made: Dict[str, Any] = {}

    def machine_for(ref: Optional[str]) -> Any:
        from .commands import machine_for as definition_for
        from .coremachine import Coremachine
        ref = ref or read_meta(store).get("machine")
        if "machine" not in made:
            made["machine"] = Coremachine(core, definition_for(store, ref))
            made["ref"] = ref
        elif ref != made["ref"]:
            raise CommandError("this process acts with the machine %s, not %s"
                               % (made["ref"], ref))
        return made["machine"]
    return machine_for


def serve(stores: Sequence[str], url: str, wait_for_device: bool = False) -> int:
    """Serve the stores on ``url`` until SIGTERM/SIGINT or ``coremachine stop``
    (on any of them); ``coremachine act`` on a store is carried out here."""
    from .control import ControlServer
    from .sync import serve as serve_on
    from .sync import shown_url

    check_device(url, wait_for_device)
    cores: List[Core] = []
    controls: List[ControlServer] = []
    try:
        for store in stores:
            cores.append(open_store(store))

        async def main() -> None:
            stop = Stop()
            for store, core in zip(stores, cores):
                controls.append(ControlServer(store, machine_for=_one_machine(core, store),
                                              on_stop=stop.request).start())
            try:
                ep = await serve_on(cores, url)
            except OSError as e:  # bind: EADDRINUSE, EADDRNOTAVAIL, EACCES
                raise CommandError("cannot listen on %s: %s" % (shown_url(url),
                                                               e.strerror or e)) from None
            try:
                # tcp://host:0 listens on a free port: say which
                where = ("tcp://%s:%d" % ep.address) if url.startswith("tcp://") \
                    else shown_url(url)
                for core in cores:
                    print("serving %s (length %d, %s) on %s" % (
                        core.key.hex(), core.length, "writer" if core.writable else "replica",
                        where), flush=True)
                await stop.event.wait()
            finally:
                await ep.close()
                for core in cores:
                    core.flush()
                print_counters(ep.counters)
        asyncio.run(main())
    finally:
        for core in cores:
            core.close()
        for control in controls:  # last: `coremachine stop` returns once the store is free
            control.close()
    return EXIT_OK


# --- pull -----------------------------------------------------------------------------

def _holds_nothing(core: Core) -> bool:
    return core.length == 0 and core.fork == 0 and core.signature is None


def _remove_store_files(store: str, remove_dir: bool) -> None:
    for name in FILE_NAMES:
        if name is not None and os.path.exists(os.path.join(store, name)):
            os.remove(os.path.join(store, name))
    if remove_dir:
        try:
            os.rmdir(store)
        except OSError:
            pass  # something else is in it: leave it


def open_replica(store: str, key: bytes) -> Tuple[Core, bool]:
    """The replica of ``key`` in ``store``, and whether this call created it.
    An empty replica of another key is replaced; one holding data is an error."""
    try:
        return Core(store, key=key, durability="batch", create=False), False
    except StoreNotFoundError:
        pass
    except KeyMismatchError:
        with Core(store) as other:
            if other.writable or not _holds_nothing(other):
                raise CommandError(
                    "%s holds another core (key %s, %d blocks): not %s; pull into another "
                    "folder" % (store, other.key.hex(), other.length, key.hex())) from None
        _remove_store_files(store, remove_dir=False)
    return Core(store, key=key, durability="batch"), True


def _answered(counters: Dict[str, int]) -> bool:
    """Did any envelope authenticated under the core's key arrive (or, over
    Hypercore's protocol, a channel open with the key's capability)?"""
    dropped = sum(counters.get(k, 0) for k in ("dropped_malformed", "dropped_unknown_core",
                                                "dropped_auth"))
    return counters.get("rx_envelopes", 0) > dropped or counters.get("channels_opened", 0) > 0


async def _pull_stream(core: Core, url: str, live: bool, counters: "Counters",
                       progress: Any) -> None:
    """Pull from a Hypercore peer; live, reconnect whenever the connection ends
    (the peer restarted), as a datagram pull keeps going."""
    from .sync import hyper
    await hyper.pull(core, url, live=live, counters=counters, progress=progress)
    while live:
        await asyncio.sleep(1.0)
        try:
            await hyper.pull(core, url, live=True, counters=counters)
        except OSError as e:
            print("coremachine: %s: %s; retrying" % (url, e), file=sys.stderr)


def _say_when_caught_up(core: Core) -> None:
    """One line on stdout once a live pull first holds the signed length."""
    def changed(_change: Any) -> None:
        if core.length and core.contiguous_length == core.length:
            unsubscribe()
            print("caught up at length %d; following live (SIGTERM stops)" % core.length,
                  flush=True)
    unsubscribe = core.on_change(changed)


def pull(store: str, key_hex: str, url: str, live: bool, timeout: Optional[float],
         window: int, wait_for_device: bool, progress: Any) -> int:
    """Pull ``key_hex`` into ``store`` from ``url``; returns the exit code."""
    from .control import ControlServer
    from .errors import InvalidArgumentError
    from .sync import Counters, Endpoint, Pulled, open_link, shown_url

    try:
        key = bytes.fromhex(key_hex)
        if len(key) != 32:
            raise ValueError
    except ValueError:
        raise InvalidArgumentError("KEY_HEX must be 64 hex digits (the core key)") from None
    if timeout is None and not live:
        timeout = DEFAULT_PULL_TIMEOUT
    if timeout is not None and timeout <= 0:
        timeout = None
    check_device(url, wait_for_device)
    created_dir = not os.path.exists(store)
    core, created = open_replica(store, key)
    outcome = {"answered": False, "done": False}

    control: Optional[ControlServer] = None

    async def main() -> int:
        nonlocal control
        stop = Stop()
        # `coremachine stop STORE` ends it as SIGTERM would
        control = ControlServer(store, on_stop=stop.request).start()
        ep: Optional[Endpoint] = None
        task: "asyncio.Future[Optional[Pulled]]"
        if url.startswith("tcp://"):
            counters = Counters()
            task = asyncio.ensure_future(_pull_stream(core, url, live, counters, progress))
        else:
            ep = Endpoint(window=window)
            counters = ep.counters
            link, addr = open_link(url, listen=False)
            await ep.attach(link)
            task = asyncio.ensure_future(ep.pull(core, link, addr, live=live, progress=progress))
        if live:
            _say_when_caught_up(core)
        stopped = asyncio.ensure_future(stop.event.wait())
        try:
            await asyncio.wait([task, stopped], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopped):
                t.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
            if ep is not None:
                await ep.close()
            core.flush()
            progress.done()
            print_counters(counters)
            outcome["answered"] = _answered(counters)
        if task.done() and not task.cancelled() and task.exception() is None:
            outcome["done"] = True
            pulled = task.result()
            if isinstance(pulled, Pulled):
                # exit 0 only from signed state: the length the peer's signature proved
                print("pulled %s: signed length %d, fork %d, verified; the peer at %s proved "
                      "signed length %d" % (core.key.hex(), pulled.length, pulled.fork,
                                            shown_url(url), pulled.proved))
            else:
                print("pulled %s: length %d, fork %d, verified" % (core.key.hex(), core.length,
                                                                    core.fork))
            return EXIT_OK
        if task.done() and not task.cancelled():
            raise task.exception()  # type: ignore[misc]
        if stop.signal is not None:
            print("stopped: have %d of %d, verified" % (core.contiguous_length, core.length))
            return EXIT_INTERRUPTED if stop.signal == signal.SIGINT and not live else EXIT_OK
        if outcome["answered"]:
            why = "the peer answered (signed length %d); have %d" % (core.length,
                                                                     core.contiguous_length)
        else:
            why = ("no peer answered for this key (discovery key %s): check the key, and that "
                   "the peer is up and serves it" % core.discovery_key.hex())
        print("coremachine: error: timed out after %gs pulling from %s: %s"
              % (timeout or 0, shown_url(url), why), file=sys.stderr)
        return EXIT_TIMEOUT
    try:
        return asyncio.run(main())
    finally:
        empty = _holds_nothing(core) and not outcome["done"]
        core.close()
        if control is not None:
            control.close()
        if created and empty:
            _remove_store_files(store, remove_dir=created_dir)

