"""The MQTT carrier: sync through a broker (Mosquitto, EMQX, HiveMQ ...) that
is not trusted: it relays sealed envelopes it can neither read nor forge.

Built on paho-mqtt 2.x, MQTT 5 (``pip install coremachine_embedded[mqtt]``;
imported on first use).  One :class:`MQTTLink` is one broker connection and
carries any number of cores.  Topics are named by discovery key only
(docs/protocol.md, "MQTT carrier")::

    PREFIX/<dk>/head          retained: the writer's signed head
    PREFIX/<dk>/live          the writer's new blocks, as they are appended
    PREFIX/<dk>/req           to whoever serves the core (first contact)
    PREFIX/<dk>/s/<link id>   one link's inbox for this core

Every publish is QoS 1 and names the sender's inbox as its MQTT 5 response
topic, so the answer goes straight back.  A puller's first messages go to
``req`` with its correlation data; the first server whose answer carries that
correlation data back, and which the endpoint finds authentic, is pinned, and
later messages go to its inbox (unpinned again after :data:`PIN_SILENCE`
seconds without a word from it, e.g. a restarted server).

Addresses given to the endpoint: a remote link id (an inbox), :data:`SERVERS`
(whoever serves the core) or ``BROADCAST`` (an envelope from ``head`` or
``live``: self-verifying signed data, no session).  Envelopes sent while the
broker is unreachable are dropped (``tx_dropped``), as a lost datagram; paho
reconnects with backoff, the session is persistent (``clean_start`` off,
``session_expiry`` seconds) so the broker keeps subscriptions and queues
messages for a device that sleeps, and the endpoint is told (``on_connect``)
so that it republishes heads and retries at once.

URL: ``mqtt://[user:pass@]host[:port]/PREFIX`` or ``mqtts://`` (TLS, port
8883); query: ``client_id`` (stable across restarts: the broker keeps its
session), ``session_expiry`` (seconds, default 3600), ``keepalive`` (30),
``mtu`` (largest envelope, default 16384), ``ca``, ``cert``, ``key`` (PEM
files), ``insecure=1`` (TLS without host name check).
"""
from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import os
import re
import socket
import ssl
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterable, Optional, Set, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import InvalidArgumentError
from . import wire
from .broadcast import BROADCAST

log = logging.getLogger("coremachine_embedded.sync.mqtt")

SERVERS = "@servers"          # the address of whoever serves a core
DEFAULT_PREFIX = "coremachine-sync"
DEFAULT_MTU = 16384
DEFAULT_SESSION_EXPIRY = 3600
DEFAULT_KEEPALIVE = 30
MAX_QUEUED = 512              # publishes not yet acknowledged; beyond: tx_dropped
PIN_SILENCE = 2.0             # seconds a pinned server may stay silent while we talk to it
RECONNECT_MIN, RECONNECT_MAX = 0.25, 8.0
MAX_REPLY_TAGS = 4096         # correlation data remembered for inboxes we answer
MAX_INBOUND = 4096            # messages waiting for the event loop; beyond: rx_dropped
MAX_ENVELOPE = wire.OVERHEAD + wire.MAX_PAYLOAD   # the largest envelope taken from any peer
SUBSCRIBE_BATCH = 64          # topic filters per SUBSCRIBE packet
HEADROOM = 1024               # MQTT header, topic and properties around an envelope
GUARD_INTERVAL = 1.0          # a clobbered retained head is restored at most this often
_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Roles = Iterable[str]  # "serve", "writer", "pull", "live"


def _paho() -> Any:
    """paho.mqtt.client, with a clear error when the extra is not installed."""
    try:
        return importlib.import_module("paho.mqtt.client")
    except ImportError:
        raise InvalidArgumentError(
            "mqtt:// needs paho-mqtt 2.x: pip install 'coremachine_embedded[mqtt]'") from None


def _topic_safe(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "+#\0") or "" in prefix.split("/"):
        raise InvalidArgumentError("MQTT topic prefix %r: no empty levels, '+', '#' or NUL"
                                   % prefix)
    return prefix


class MQTTLink:
    """One MQTT 5 broker connection carrying envelopes of at most ``mtu`` bytes.

    Carrier interface: ``await start(on_receive)``, ``send(envelope, addr)``,
    ``await close()``, ``mtu``, ``frame_seconds``; as a fan-out carrier
    (``broadcasts``): ``watch(dk, roles)`` subscribes a core's topics,
    ``broadcast(envelope, kind)`` publishes on ``head`` (retained) or
    ``live``, and ``on_connect`` is called on the event loop after every
    (re)connection.  paho's network thread only queues what arrives; the
    endpoint sees it on the event loop.

    ``counters``: ``published``/``received`` (+ ``_bytes``), ``tx_dropped``
    (broker down or :data:`MAX_QUEUED` publishes waiting), ``rx_oversize``
    (over the largest envelope of any peer), ``rx_dropped`` (:data:`MAX_INBOUND`
    messages waiting for the event loop),
    ``rx_bad_topic`` (no valid response topic, or an envelope for another
    core than its topic), ``connects``, ``disconnects``, ``sessions_resumed``
    (the broker had kept our session), ``connect_failures``, ``pins``,
    ``unpins``, ``heads_clobbered``/``heads_restored`` (someone replaced a
    retained head we published), ``rx_callback_errors`` (the endpoint raised: logged, the link
    goes on).
    """

    frame_seconds = 0.0
    broadcasts = True

    def __init__(self, host: str, port: int = 1883, prefix: str = DEFAULT_PREFIX, *,
                 tls: bool = False, username: Optional[str] = None,
                 password: Optional[str] = None, client_id: Optional[str] = None,
                 session_expiry: int = DEFAULT_SESSION_EXPIRY,
                 keepalive: int = DEFAULT_KEEPALIVE, mtu: int = DEFAULT_MTU,
                 ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, insecure: bool = False) -> None:
        if not 256 <= mtu <= MAX_ENVELOPE:
            raise InvalidArgumentError("mtu must be between 256 and %d" % MAX_ENVELOPE)
        if client_id is not None and not _LINK_ID.match(client_id):
            raise InvalidArgumentError("client_id: 1-64 of A-Z a-z 0-9 _ -, not %r" % client_id)
        if session_expiry < 0 or keepalive < 5:
            raise InvalidArgumentError("session_expiry must be >= 0 and keepalive >= 5")
        self.host, self.port, self.prefix = host, port, _topic_safe(prefix)
        self.mtu = mtu
        self.link_id = client_id or os.urandom(8).hex()
        self.persistent_id = client_id is not None
        self.on_connect: Optional[Callable[[], None]] = None
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self._settings = dict(tls=tls, username=username, password=password, ca=ca, cert=cert,
                              key=key, insecure=insecure, session_expiry=session_expiry,
                              keepalive=keepalive)
        self._client: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._on_receive: Optional[Callable[[bytes, Any], Any]] = None
        self._lock = threading.Lock()          # guards _inbound, _topics (paho's thread)
        self._inbound: Deque[Tuple[str, bytes, Any]] = collections.deque()
        self._drain_scheduled = False
        self._topics: Dict[bytes, Set[str]] = {}
        self._pins: Dict[bytes, str] = {}      # core -> the server's link id
        self._pin_heard: Dict[bytes, float] = {}
        self._pin_waiting: Dict[bytes, Tuple[float, int]] = {}  # (first unanswered send, count)
        self._tags: Dict[bytes, bytes] = {}    # core -> our correlation data
        self._reply_tags: "collections.OrderedDict[Tuple[bytes, str], bytes]" = \
            collections.OrderedDict()
        self._props: Dict[Tuple[bytes, Optional[bytes]], Any] = {}
        self._heads: Dict[bytes, bytes] = {}   # core -> the head we published last
        self._restored: Dict[bytes, float] = {}
        self._restoring: Set[bytes] = set()
        self._last_error = ""

    @classmethod
    def from_url(cls, url: str) -> "MQTTLink":
        """A link for ``mqtt://[user:pass@]host[:port]/PREFIX[?...]`` or ``mqtts://``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise InvalidArgumentError("an MQTT address looks like mqtt://[user:pass@]host"
                                       "[:port]/PREFIX, not %r" % url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        known = {"client_id", "session_expiry", "keepalive", "mtu", "ca", "cert", "key",
                 "insecure"}
        unknown = set(query) - known
        if unknown:
            raise InvalidArgumentError("unknown MQTT URL option(s) %s (known: %s)"
                                       % (", ".join(sorted(unknown)), ", ".join(sorted(known))))
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
            numbers = {k: int(query[k]) for k in ("session_expiry", "keepalive", "mtu")
                       if k in query}
        except ValueError as e:
            raise InvalidArgumentError("MQTT URL %r: %s" % (url, e)) from None
        return cls(parts.hostname, port, unquote(parts.path.strip("/")) or DEFAULT_PREFIX,
                   tls=tls, username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   client_id=query.get("client_id"), ca=query.get("ca"),
                   cert=query.get("cert"), key=query.get("key"),
                   insecure=query.get("insecure", "0").lower() in ("1", "true", "yes"),
                   **numbers)

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.is_connected())

    # --- topics ------------------------------------------------------------------------

    def _inbox(self, dk: bytes, link_id: str) -> str:
        return self._topic(dk, "s/" + link_id)

    def _core_topics(self, dk: bytes, roles: Roles) -> Set[str]:
        topics = {self._inbox(dk, self.link_id)}
        roles = set(roles)
        if "serve" in roles:
            topics.add(self._topic(dk, "req"))
        if roles & {"pull", "writer"}:  # a writer watches its head: it restores a clobbered one
            topics.add(self._topic(dk, "head"))
        if "live" in roles:
            topics.add(self._topic(dk, "live"))
        return topics

    def watch(self, dk: bytes, roles: Roles) -> None:
        """Subscribe the topics of core ``dk`` for ``roles`` (and drop the others)."""
        want = self._core_topics(dk, roles)
        with self._lock:
            had = self._topics.get(dk, set())
            self._topics[dk] = want
        client = self._client
        if client is None or not self.connected:
            return  # subscribed on connect
        _subscribe(client, want - had)
        if had - want:
            client.unsubscribe(sorted(had - want))

    def unwatch(self, dk: bytes) -> None:
        """Unsubscribe every topic of core ``dk`` (it left the endpoint)."""
        with self._lock:
            had = self._topics.pop(dk, set())
        client = self._client
        if had and client is not None and self.connected:
            client.unsubscribe(sorted(had))

    # --- running -----------------------------------------------------------------------

    async def start(self, on_receive: Callable[[bytes, Any], Any]) -> None:
        """Connect in the background (paho's thread retries with backoff): the
        endpoint can be used at once; envelopes sent before the broker
        answers are dropped like lost datagrams."""
        paho = _paho()
        s = self._settings
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.link_id,
                             protocol=paho.MQTTv5)
        if s["username"] is not None:
            client.username_pw_set(s["username"], s["password"])
        if s["tls"]:
            try:
                client.tls_set(ca_certs=s["ca"], certfile=s["cert"], keyfile=s["key"],
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ValueError, ssl.SSLError) as e:
                raise InvalidArgumentError("MQTT TLS set-up failed: %s" % e) from None
            client.tls_insecure_set(bool(s["insecure"]))
        client.max_queued_messages_set(MAX_QUEUED)
        client.max_inflight_messages_set(64)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_socket_open = _no_delay
        props = _properties("CONNECT")
        props.SessionExpiryInterval = s["session_expiry"]
        props.ReceiveMaximum = 256
        client.connect_async(self.host, self.port, keepalive=s["keepalive"], clean_start=False,
                             properties=props)
        self._loop = asyncio.get_running_loop()
        self._on_receive = on_receive
        self._client = client
        client.loop_start()

    async def close(self) -> None:
        """Disconnect; a random client id's session ends with it, a given
        ``client_id`` keeps its session at the broker until it expires."""
        client, self._client = self._client, None
        if client is None:
            return
        props = None
        if not self.persistent_id and client.is_connected():
            props = _properties("DISCONNECT")
            props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, client.loop_stop)
        self._on_receive = None

    # --- paho's thread -----------------------------------------------------------------

    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        if reason.is_failure:
            self._connect_failed(str(reason))
            return
        self.counters["connects"] += 1
        if flags.session_present:
            self.counters["sessions_resumed"] += 1
        self._last_error = ""
        log.info("connected to %s:%d as %s%s", self.host, self.port, self.link_id,
                 " (session resumed)" if flags.session_present else "")
        maximum = getattr(properties, "MaximumPacketSize", None)
        if isinstance(maximum, int) and maximum - HEADROOM < self.mtu:
            self.mtu = max(256, maximum - HEADROOM)   # what this broker takes, at most
            log.info("the broker takes packets of up to %d bytes: mtu %d", maximum, self.mtu)
        with self._lock:
            topics = set().union(*self._topics.values()) if self._topics else set()
        _subscribe(client, topics)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._connected)

    def _paho_connect_fail(self, client: Any, userdata: Any) -> None:
        self._connect_failed("cannot reach the broker")

    def _connect_failed(self, why: str) -> None:
        self.counters["connect_failures"] += 1
        if why != self._last_error:  # once per distinct reason, not every retry
            self._last_error = why
            log.warning("MQTT %s:%d: %s (retrying with backoff up to %gs)",
                        self.host, self.port, why, RECONNECT_MAX)

    def _paho_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                         properties: Any) -> None:
        self.counters["disconnects"] += 1
        if self._client is not None:
            log.info("disconnected from %s:%d: %s", self.host, self.port, reason)

    def _paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            if len(self._inbound) >= MAX_INBOUND:  # a flood faster than we verify
                self.counters["rx_dropped"] += 1
                return
            self._inbound.append((message.topic, message.payload,
                                  getattr(message, "properties", None)))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    # --- the event loop ----------------------------------------------------------------

    def _connected(self) -> None:
        if self.on_connect is not None:
            self.on_connect()

    def _drain(self) -> None:
        with self._lock:
            batch, self._inbound = self._inbound, collections.deque()
            self._drain_scheduled = False
        for topic, payload, props in batch:
            try:
                self._dispatch(topic, bytes(payload), props)
            except Exception:  # a bug must not lose the rest of the batch, nor the link
                self.counters["rx_callback_errors"] += 1
                log.exception("MQTT message on %s", topic)

    def _dispatch(self, topic: str, data: bytes, props: Any) -> None:
        deliver = self._on_receive
        if deliver is None:
            return
        self.counters["received"] += 1
        self.counters["received_bytes"] += len(data)
        if len(data) > MAX_ENVELOPE:  # peers may use another mtu: take any envelope
            self.counters["rx_oversize"] += 1
            return
        parsed = self._parse(topic, data)
        if parsed is None:
            self.counters["rx_bad_topic"] += 1
            return
        dk, leaf = parsed
        if leaf == "head" and dk in self._heads:
            self._guard_head(dk, data)   # our own head topic
            return
        if wire.peek(data) != dk:        # an envelope for another core than its topic
            self.counters["rx_bad_topic"] += 1
            return
        if leaf in ("head", "live"):
            deliver(data, BROADCAST)
            return
        sender = self._sender(dk, props)
        if sender is None or sender == self.link_id:
            self.counters["rx_bad_topic"] += 1
            return
        tag = getattr(props, "CorrelationData", None)
        if leaf == "req":
            # echoed on our answers, once the endpoint found the envelope authentic
            # (garbage naming someone's inbox must not change what that inbox gets)
            if deliver(data, sender) and isinstance(tag, bytes) and len(tag) <= 32:
                self._reply_tags[(dk, sender)] = tag
                self._reply_tags.move_to_end((dk, sender))
                while len(self._reply_tags) > MAX_REPLY_TAGS:
                    self._reply_tags.popitem(last=False)
            return
        pinned = self._pins.get(dk)
        if pinned == sender:
            self._pin_heard[dk] = time.monotonic()
            self._pin_waiting.pop(dk, None)
            deliver(data, SERVERS)
        elif pinned is None and dk in self._tags and tag == self._tags[dk]:
            # an answer to what we sent to "whoever serves": pin it if the endpoint trusts it
            self._pins[dk] = sender
            self._pin_heard[dk] = time.monotonic()
            if deliver(data, SERVERS):
                self.counters["pins"] += 1
            elif self._pins.get(dk) == sender:
                del self._pins[dk]
        else:
            deliver(data, sender)

    def _guard_head(self, dk: bytes, data: bytes) -> None:
        """Someone replaced the retained head we published (with garbage, an
        old head): publish ours again, at most once a second, and last (a
        restore is scheduled while the interval runs)."""
        if data == self._heads[dk]:
            return
        self.counters["heads_clobbered"] += 1
        if dk in self._restoring or self._loop is None:
            return
        self._restoring.add(dk)

        def restore() -> None:
            self._restoring.discard(dk)
            self._restored[dk] = time.monotonic()
            self.counters["heads_restored"] += 1
            self._publish(self._topic(dk, "head"), self._heads[dk], None, retain=True)
        wait = self._restored.get(dk, 0.0) + GUARD_INTERVAL - time.monotonic()
        self._loop.call_later(max(0.0, wait), restore)

    def _parse(self, topic: str, data: bytes) -> Optional[Tuple[bytes, str]]:
        """(discovery key, leaf) of a topic of ours."""
        if not topic.startswith(self.prefix + "/"):
            return None
        rest = topic[len(self.prefix) + 1:].split("/")
        if len(rest) < 2 or len(rest[0]) != 64:
            return None
        try:
            dk = bytes.fromhex(rest[0])
        except ValueError:
            return None
        leaf = "/".join(rest[1:])
        if leaf not in ("head", "live", "req") and leaf != "s/" + self.link_id:
            return None
        return dk, leaf

    def _sender(self, dk: bytes, props: Any) -> Optional[str]:
        """The link id of the inbox a message names as its response topic (only
        an inbox of the same core: answers never go anywhere else)."""
        reply = getattr(props, "ResponseTopic", None)
        head = self._inbox(dk, "")
        if not isinstance(reply, str) or not reply.startswith(head):
            return None
        link_id = reply[len(head):]
        return link_id if _LINK_ID.match(link_id) else None

    def send(self, envelope: bytes, addr: Any) -> None:
        """Publish one envelope (QoS 1) to ``addr``'s inbox, or for :data:`SERVERS`
        to the pinned server or the core's ``req`` topic; never blocks."""
        dk = bytes(envelope[1:wire.HEADER])
        tag: Optional[bytes]
        if addr == SERVERS:
            tag = self._tags.get(dk)
            if tag is None:
                tag = self._tags[dk] = os.urandom(8)
            pinned = self._pins.get(dk)
            if pinned is not None and self._pin_silent(dk):
                pinned = None
            topic = self._topic(dk, "req") if pinned is None else self._inbox(dk, pinned)
        elif isinstance(addr, str) and _LINK_ID.match(addr):
            tag = self._reply_tags.get((dk, addr))
            topic = self._inbox(dk, addr)
        else:
            self.counters["tx_dropped"] += 1
            return
        self._publish(topic, envelope, self._reply_props(dk, tag), retain=False)

    def _pin_silent(self, dk: bytes) -> bool:
        """Count a send to the pinned server; unpin it when it has not said a
        word for PIN_SILENCE seconds while we kept talking (it restarted, or
        went away): the next message goes to ``req`` again."""
        now = time.monotonic()
        first, count = self._pin_waiting.get(dk, (now, 0))
        if self._pin_heard.get(dk, 0.0) > first:
            first, count = now, 0
        self._pin_waiting[dk] = (first, count + 1)
        if count >= 2 and now - first > PIN_SILENCE:
            del self._pins[dk]
            self._pin_waiting.pop(dk, None)
            self.counters["unpins"] += 1
            return True
        return False

    def broadcast(self, envelope: bytes, kind: str) -> None:
        """Publish a writer's signed ``head`` (retained, and restored when
        someone replaces it) or ``live`` block."""
        dk = bytes(envelope[1:wire.HEADER])
        if kind not in ("head", "live") or len(envelope) > self.mtu:
            self.counters["tx_dropped"] += 1
            return
        if kind == "head":
            self._heads[dk] = envelope
        self._publish(self._topic(dk, kind), envelope, None, retain=kind == "head")

    def _topic(self, dk: bytes, leaf: str) -> str:
        return "%s/%s/%s" % (self.prefix, dk.hex(), leaf)

    def _reply_props(self, dk: bytes, tag: Optional[bytes]) -> Any:
        props = self._props.get((dk, tag))
        if props is None:
            if len(self._props) > MAX_REPLY_TAGS:
                self._props.clear()
            props = self._props[(dk, tag)] = _properties("PUBLISH")
            props.ResponseTopic = self._inbox(dk, self.link_id)
            if tag is not None:
                props.CorrelationData = tag
        return props

    def _publish(self, topic: str, envelope: bytes, props: Any, retain: bool) -> None:
        client = self._client
        if client is None or not client.is_connected():
            self.counters["tx_dropped"] += 1
            return
        info = client.publish(topic, envelope, qos=1, retain=retain, properties=props)
        if info.rc != 0:  # the queue is full, or the connection just went
            self.counters["tx_dropped"] += 1
            return
        self.counters["published"] += 1
        self.counters["published_bytes"] += len(envelope)


def _subscribe(client: Any, topics: Iterable[str]) -> None:
    """Subscribe (QoS 1) in packets of a few dozen filters.  noLocal: never our
    own publishes; retainHandling 1: a retained head only on a new
    subscription, not again when a resumed session subscribes again."""
    options = _paho().SubscribeOptions(qos=1, noLocal=True, retainHandling=1)
    ordered = sorted(topics)
    for i in range(0, len(ordered), SUBSCRIBE_BATCH):
        client.subscribe([(t, options) for t in ordered[i:i + SUBSCRIBE_BATCH]])


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Small envelopes go out at once (Nagle would hold a request ~40 ms).
    ``sock`` is what paho 2's ``Client.socket()`` returns: a socket or, with
    TLS, an ``ssl.SSLSocket`` (a socket too; we use no websockets)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket: nothing to tune


def _properties(packet: str) -> Any:
    props = importlib.import_module("paho.mqtt.properties")
    types = importlib.import_module("paho.mqtt.packettypes").PacketTypes
    return props.Properties(getattr(types, packet))
