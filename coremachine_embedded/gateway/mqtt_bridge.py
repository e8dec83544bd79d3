"""The MQTT bridge: every member's state and transitions on a broker, Home
Assistant discovery, and actions for the local machines the configuration
allows.  Needs paho-mqtt 2.x (``pip install coremachine_embedded[mqtt]``),
imported when a bridge starts.

Topics (``coremachine`` is ``topic_prefix``)::

    coremachine/<name>/state          retained: state, context, event, index, length, fork
    coremachine/<name>/events         every transition: index, fork, event, value, state, context
    coremachine/<name>/availability   retained: online / offline (contact with the device)
    coremachine/<name>/action         in: {"event": E, "value": V, "id": ...} (local machines)
    coremachine/<name>/action/reply   out: {"id", "ok", "state", "context", "index"} or
                                      {"id", "ok": false, "error", "code"} (or the MQTT 5
                                      response topic, with its correlation data)
    coremachine/gateway/<gw>/status   retained: online / offline (the broker's will)
    homeassistant/...                 retained discovery configs (discovery_prefix)

DEV NOTES.  The log is the queue: each member has a cursor, the next entry
to publish, and paho holds at most ``WINDOW`` unacknowledged messages (it
resends them itself after a reconnect).  While the broker is away nothing
new is handed to paho; when it returns, publishing resumes from the cursors,
reading the entries back from the verified logs, then the retained states
are published again.  The acknowledged cursors are saved in
``store_dir/mqtt-cursors.json``, so a restarted gateway publishes what it
had not got acknowledged (at least once: events carry their index).  paho
calls back in its own thread; everything is handed to the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import _json
from ..export import decode, rows
from .config import MqttConfig
from .members import Device, Local, Member

log = logging.getLogger("coremachine_embedded.gateway.mqtt")

WINDOW = 256               # messages handed to paho and not acknowledged yet
MAX_ACTION_BYTES = 65536
CURSORS_FILE = "mqtt-cursors.json"
SAVE_PERIOD = 5.0          # seconds between saves of the acknowledged cursors
_OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]")


class _Feed:
    """What has been published for one member."""

    def __init__(self, member: Member, cursor: int) -> None:
        self.member = member
        self.cursor = cursor                 # next entry to publish as an event
        self.unacked: Dict[int, int] = {}    # event index -> paho mid
        self.acked = cursor                  # every event below this was acknowledged
        self.state_sent: Optional[Tuple[int, int]] = None   # (fork, length) published
        self.fields: Set[str] = set()        # context fields announced to Home Assistant
        self.discovered = False
        self.availability: Optional[bool] = None

    def ack(self, index: int) -> None:
        self.unacked.pop(index, None)
        self.acked = min(self.unacked) if self.unacked else self.cursor


class MqttBridge:
    """Publishes a gateway's members to one broker (see the module docstring)."""

    def __init__(self, config: MqttConfig, gateway: Any) -> None:
        self.config = config
        self.gateway = gateway
        self.prefix = config.topic_prefix
        self.connected = False
        self.listening = False    # the broker confirmed our subscription to the action topics
        self.counters: Dict[str, int] = dict.fromkeys(
            ("connects", "disconnects", "connect_failures", "events", "states", "discovery",
             "actions_ok", "actions_rejected", "actions_refused", "publish_errors"), 0)
        self._client: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._feeds: Dict[str, _Feed] = {}
        self._mids: Dict[int, Tuple[Optional[_Feed], Optional[int]]] = {}
        self._saved: Dict[str, Dict[str, Any]] = {}
        self._pump_scheduled = False
        self._ticker: Optional["asyncio.Task[None]"] = None
        self._unsubscribe: List[Any] = []
        self._failures_in_row = 0
        self._cursor_path = os.path.join(gateway.config.store_dir, CURSORS_FILE)

    # --- lifetime -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retried with backoff until it works)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        self._loop = asyncio.get_running_loop()
        self._saved = self._load_cursors()
        cfg = self.config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             protocol=mqtt.MQTTv5)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            client.tls_insecure_set(cfg.tls_insecure)
        client.will_set(self._gateway_status_topic(), b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, int(cfg.retry_min)),
                                   max_delay=max(1, int(cfg.retry_max)))
        client.max_inflight_messages_set(WINDOW)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_connect_fail = self._paho_connect_fail
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.on_subscribe = self._paho_subscribe
        self._client = client
        for member in self.gateway.members():
            self._member(member, True)
        self._unsubscribe = [self.gateway.on_change(self._changed),
                             self.gateway.on_members(self._member)]
        log.info("MQTT: connecting to %s:%d as %s", cfg.host, cfg.port, cfg.client_id)
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        client.loop_start()
        self._ticker = self._loop.create_task(self._tick())

    async def stop(self, drain: float = 2.0) -> None:
        """Publish "offline", wait up to ``drain`` seconds for acknowledgements,
        save the cursors, disconnect."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        client, self._client = self._client, None
        if client is None:
            return
        if self.connected:
            client.publish(self._gateway_status_topic(), b"offline", qos=1, retain=True)
            deadline = time.monotonic() + drain
            while self._mids and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._save_cursors()
        client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)
        self.connected = False

    # --- paho callbacks (paho's thread): hand over to the loop ---------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        self._call(self._on_connect, client, not reason.is_failure, str(reason))

    def _paho_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                         properties: Any) -> None:
        self._call(self._on_disconnect, client, str(reason))

    def _paho_connect_fail(self, client: Any, userdata: Any) -> None:
        self._call(self._on_connect_fail, client)

    def _paho_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                      properties: Any) -> None:
        self._call(self._on_ack, client, mid)

    def _paho_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                        properties: Any) -> None:
        self._call(self._on_subscribed, client, all(not r.is_failure for r in reasons))

    def _paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = getattr(message, "properties", None)
        self._call(self._on_action, client, message.topic, bytes(message.payload),
                   getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))

    # --- connection ---------------------------------------------------------------

    def _on_connect(self, client: Any, ok: bool, reason: str) -> None:
        if client is not self._client:
            return
        if not ok:
            self.counters["connect_failures"] += 1
            log.warning("MQTT: %s:%d refused the connection: %s", self.config.host,
                        self.config.port, reason)
            return
        self.connected = True
        self._failures_in_row = 0
        self.counters["connects"] += 1
        log.info("MQTT: connected to %s:%d", self.config.host, self.config.port)
        client.subscribe("%s/+/action" % self.prefix, qos=1)
        self._publish(None, None, self._gateway_status_topic(), b"online", retain=True)
        for feed in self._feeds.values():  # the broker may have lost its retained messages
            feed.discovered = False
            feed.fields.clear()
            feed.state_sent = None
            feed.availability = None
        self._schedule_pump()

    def _on_subscribed(self, client: Any, ok: bool) -> None:
        if client is self._client:
            self.listening = ok
            if not ok:
                log.error("MQTT: the broker refused the subscription to %s/+/action: actions "
                          "will not arrive", self.prefix)

    def _on_disconnect(self, client: Any, reason: str) -> None:
        if client is not self._client or not self.connected:
            return
        self.connected = self.listening = False
        self.counters["disconnects"] += 1
        log.warning("MQTT: lost the broker (%s); reconnecting, publishing resumes from the "
                    "logs", reason)

    def _on_connect_fail(self, client: Any) -> None:
        if client is not self._client:
            return
        self.counters["connect_failures"] += 1
        self._failures_in_row += 1
        if self._failures_in_row in (1, 2, 4, 8) or self._failures_in_row % 16 == 0:
            log.warning("MQTT: broker %s:%d unreachable (%d attempts); retrying with backoff "
                        "up to %.0f s", self.config.host, self.config.port,
                        self._failures_in_row, self.config.retry_max)

    def _on_ack(self, client: Any, mid: int) -> None:
        if client is not self._client:
            return
        feed, index = self._mids.pop(mid, (None, None))
        if feed is not None and index is not None:
            feed.ack(index)
        self._schedule_pump()

    # --- members and changes ---------------------------------------------------------

    def _member(self, member: Member, added: bool) -> None:
        if not added:
            self._feeds.pop(member.name, None)
            return
        if member.core is None:
            return
        length = member.core.contiguous_length
        saved = self._saved.get(member.name)
        key = member.core.key.hex()
        # a member the bridge published before resumes where the broker acknowledged;
        # a new one starts at its current length (its history is not replayed as events)
        acked = saved.get("acked") if isinstance(saved, dict) and saved.get("key") == key else None
        cursor = acked if isinstance(acked, int) and acked >= 0 else length
        self._feeds[member.name] = _Feed(member, min(cursor, length))
        self._schedule_pump()

    def _changed(self, member: Member) -> None:
        if member.name in self._feeds:
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Publish what is due, oldest first, within the window."""
        self._pump_scheduled = False
        if not self.connected or self._client is None:
            return
        for feed in list(self._feeds.values()):
            if len(self._mids) >= WINDOW:
                return
            try:
                self._publish_feed(feed)
            except Exception as e:  # a damaged store: say which, go on with the others
                self.counters["publish_errors"] += 1
                log.error("MQTT: publishing %s: %s", feed.member.name, e)

    def _publish_feed(self, feed: _Feed) -> None:
        member = feed.member
        core = member.core
        if core is None:
            return
        if not feed.discovered and self.config.discovery_prefix:
            self._discover(feed)
        length = core.contiguous_length
        if feed.cursor > length:  # truncated (a new fork): publish from there again
            feed.cursor = length
            for index in [i for i in feed.unacked if i >= length]:
                feed.unacked.pop(index)
            feed.acked = min(feed.acked, length)
        if feed.cursor < length and len(self._mids) < WINDOW:
            take = min(length, feed.cursor + WINDOW - len(self._mids))
            for row in rows(core, feed.cursor, take):
                self._publish(feed, row["index"], self._topic(member, "events"),
                              _json.dumps(row))
                feed.cursor = row["index"] + 1
        if feed.cursor >= length and feed.state_sent != (core.fork, length):
            self._publish_state(feed, length)
        online = not isinstance(member, Device) or member.online
        if feed.availability != online:
            feed.availability = online
            self._publish(None, None, self._topic(member, "availability"),
                          b"online" if online else b"offline", retain=True)

    def _publish_state(self, feed: _Feed, length: int) -> None:
        core = feed.member.core
        assert core is not None
        state: Dict[str, Any] = {"state": None, "context": None, "event": None,
                                 "index": length - 1 if length else None}
        if length:
            entry = decode(core.get(length - 1))
            state.update(state=entry["state"], context=entry["context"], event=entry["event"])
        elif feed.member.definition is not None:
            d = feed.member.definition
            state.update(state=d.states[d.initial_id], context=d.context)
        state.update(length=length, fork=core.fork)
        self._publish(None, None, self._topic(feed.member, "state"), _json.dumps(state),
                      retain=True)
        feed.state_sent = (core.fork, length)
        self.counters["states"] += 1
        context = state["context"]
        if self.config.discovery_prefix and isinstance(context, dict):
            for name, value in context.items():
                if name not in feed.fields and _numeric(value):
                    self._discover_field(feed, name)

    def _publish(self, feed: Optional[_Feed], index: Optional[int], topic: str, payload: bytes,
                 retain: bool = False) -> None:
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        self._mids[info.mid] = (feed, index)
        if feed is not None and index is not None:
            feed.unacked[index] = info.mid
            self.counters["events"] += 1

    def _topic(self, member: Member, leaf: str) -> str:
        return "%s/%s/%s" % (self.prefix, member.name, leaf)

    def _gateway_status_topic(self) -> str:
        return "%s/gateway/%s/status" % (self.prefix, self.gateway.config.name)

    # --- Home Assistant discovery -------------------------------------------------------

    def _device_block(self, member: Member) -> Dict[str, Any]:
        return {"identifiers": ["coremachine_%s" % member.name], "name": member.name,
                "manufacturer": "coremachine_embedded",
                "model": member.machine_ref or "signed log",
                "via_device": "coremachine_gateway_%s" % self.gateway.config.name}

    def _availability(self, member: Member) -> Dict[str, Any]:
        return {"availability": [{"topic": self._gateway_status_topic()},
                                 {"topic": self._topic(member, "availability")}],
                "availability_mode": "all"}

    def _discover(self, feed: _Feed) -> None:
        member = feed.member
        config: Dict[str, Any] = {
            "name": "State", "unique_id": "coremachine_%s_state" % member.name,
            "state_topic": self._topic(member, "state"),
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": self._topic(member, "state"),
            "json_attributes_template": "{{ value_json.context | tojson }}",
            "icon": "mdi:state-machine", "device": self._device_block(member)}
        config.update(self._availability(member))
        if member.definition is not None:
            config.update(device_class="enum", options=list(member.definition.states))
        self._publish_discovery("sensor", member, "state", config)
        if isinstance(member, Local):
            for event in member.config.actions:
                if event != "*":
                    self._publish_discovery("button", member, "action_" + event, dict(
                        name=event, unique_id="coremachine_%s_action_%s" % (member.name, event),
                        command_topic=self._topic(member, "action"),
                        payload_press=json.dumps({"event": event}),
                        device=self._device_block(member), **self._availability(member)))
        feed.discovered = True

    def _discover_field(self, feed: _Feed, field: str) -> None:
        member = feed.member
        object_id = "context_" + _OBJECT_ID.sub("_", field)
        config = {"name": field, "unique_id": "coremachine_%s_%s" % (member.name, object_id),
                  "state_topic": self._topic(member, "state"),
                  "value_template": "{{ value_json.context[%s] }}" % json.dumps(field),
                  "state_class": "measurement", "device": self._device_block(member)}
        config.update(self._availability(member))
        self._publish_discovery("sensor", member, object_id, config)
        feed.fields.add(field)

    def _publish_discovery(self, component: str, member: Member, object_id: str,
                           config: Dict[str, Any]) -> None:
        topic = "%s/%s/coremachine_%s/%s/config" % (self.config.discovery_prefix, component,
                                                    member.name, object_id)
        self._publish(None, None, topic, json.dumps(config).encode(), retain=True)
        self.counters["discovery"] += 1

    # --- actions ------------------------------------------------------------------------

    def _on_action(self, client: Any, topic: str, payload: bytes, response_topic: Optional[str],
                   correlation: Optional[bytes]) -> None:
        if client is not self._client:
            return
        name = topic[len(self.prefix) + 1:].split("/", 1)[0]
        reply_to = response_topic or "%s/%s/action/reply" % (self.prefix, name)
        request_id: Any = None
        try:
            event, value, request_id = _parse_action(payload)
            local = self.gateway.locals.get(name)
            if local is None or local.machine is None or not local.allows(event):
                self.counters["actions_refused"] += 1
                log.warning("MQTT: refused action %r for %r (not a local machine that allows "
                            "it in the configuration)", event, name)
                reply: Dict[str, Any] = {"ok": False, "code": "NOT_ALLOWED", "error": (
                    "%s does not accept %s from MQTT" % (name, event))}
            else:
                from ..coremachine import MISSING
                snap = local.machine.action(event, MISSING if value is _NO_VALUE else value)
                self.counters["actions_ok"] += 1
                reply = {"ok": True, "event": event, "state": snap.state,
                         "context": snap.context, "index": snap.index}
        except Exception as e:  # a rejected action, a bad value, a failing store: say so
            self.counters["actions_rejected"] += 1
            reply = {"ok": False, "code": getattr(e, "code", type(e).__name__),
                     "error": getattr(e, "message", None) or str(e)}
        reply["id"] = request_id
        self._reply(reply_to, reply, correlation)

    def _reply(self, topic: str, reply: Dict[str, Any], correlation: Optional[bytes]) -> None:
        if self._client is None:
            return
        properties = None
        if correlation is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        info = self._client.publish(topic, _json.dumps(reply), qos=1, properties=properties)
        self._mids[info.mid] = (None, None)

    # --- bookkeeping ------------------------------------------------------------------

    async def _tick(self) -> None:
        """Availability changes and cursor saves, once a second."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self._schedule_pump()
            if time.monotonic() - last_save > SAVE_PERIOD:
                last_save = time.monotonic()
                try:
                    self._save_cursors()
                except OSError as e:
                    log.error("MQTT: saving %s: %s", self._cursor_path, e)

    def _load_cursors(self) -> Dict[str, Dict[str, Any]]:
        try:
            with open(self._cursor_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("MQTT: ignoring %s (%s): members start at their current length",
                        self._cursor_path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_cursors(self) -> None:
        data = dict(self._saved)
        for name, feed in self._feeds.items():
            if feed.member.core is not None:
                data[name] = {"key": feed.member.core.key.hex(), "acked": feed.acked}
        if data == self._saved:
            return
        os.makedirs(os.path.dirname(self._cursor_path), exist_ok=True)
        tmp = self._cursor_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self._cursor_path)
        self._saved = data

    def metrics(self) -> List[Tuple[str, str, str, List[Tuple[Dict[str, str], float]]]]:
        """Families for the metrics page."""
        c = self.counters
        pending = sum(max(0, (f.member.core.contiguous_length if f.member.core else 0) - f.acked)
                      for f in self._feeds.values())
        return [
            ("coremachine_mqtt_connected", "gauge", "1 while connected to the broker.",
             [({}, 1 if self.connected else 0)]),
            ("coremachine_mqtt_connects_total", "counter", "Connections made.",
             [({}, c["connects"])]),
            ("coremachine_mqtt_connect_failures_total", "counter",
             "Connection attempts that failed.", [({}, c["connect_failures"])]),
            ("coremachine_mqtt_published_total", "counter", "Messages published, by kind.",
             [({"kind": k}, c[k]) for k in ("events", "states", "discovery")]),
            ("coremachine_mqtt_pending_events", "gauge",
             "Entries not yet acknowledged by the broker as events.", [({}, pending)]),
            ("coremachine_mqtt_actions_total", "counter", "Actions received, by result.",
             [({"result": k[len("actions_"):]}, c[k])
              for k in ("actions_ok", "actions_rejected", "actions_refused")]),
        ]


_NO_VALUE = object()


def _parse_action(payload: bytes) -> Tuple[str, Any, Any]:
    """``{"event": E, "value": V, "id": I}`` (or ``"action"`` for ``"event"``, as
    the JS stream side writes it), or a bare event name -> (event, value, id)."""
    if len(payload) > MAX_ACTION_BYTES:
        raise ValueError("an action message is at most %d bytes" % MAX_ACTION_BYTES)
    text = payload.decode("utf-8").strip()
    if not text.startswith("{"):
        if not text:
            raise ValueError("an empty action message")
        return text, _NO_VALUE, None
    message = _json.loads(text)
    if not isinstance(message, dict):
        raise ValueError("an action message is a JSON object")
    event = message.get("event", message.get("action"))
    if not isinstance(event, str) or not event:
        raise ValueError('an action message needs "event": "NAME"')
    return event, message.get("value", _NO_VALUE), message.get("id")


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
