"""A real Mosquitto broker for the tests: its own configuration on 127.0.0.1
and a free port, persistence in a temporary folder (retained messages and
persistent sessions survive a restart), started and stopped by the tests;
and a recording MQTT 5 client."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def need_broker() -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (sh .ci/ensure-deps.sh --test installs it)")
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install "
                        "'paho-mqtt>=2')")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """``mosquitto -c CONF`` on 127.0.0.1:port; restartable on the same port."""

    def __init__(self, base: str, port: Optional[int] = None) -> None:
        self.dir = os.path.join(base, "mosquitto")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_tcp_port()
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    "persistence_location %s/\nlog_dest file %s/log\nlog_type all\n"
                    "max_queued_messages 100000\n" % (self.port, self.dir, self.dir))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    def start(self) -> "Broker":
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start: %s" % self.log()[-2000:])
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its retained messages and sessions, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Recorder:
    """An MQTT 5 client that records every message it gets, by topic."""

    def __init__(self, broker: Broker, topics: List[str], client_id: str = "",
                 persistent: bool = False) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        self.messages: List[Tuple[str, bytes, bool, Any]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.topics = topics
        props = None
        if persistent:   # the broker keeps our subscriptions and queues for us while we are away
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", broker.port, keepalive=10,
                            clean_start=not persistent, properties=props)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])   # one SUBACK for all
            self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain),
                                  getattr(msg, "properties", None)))

    def on(self, topic: str) -> List[bytes]:
        with self.lock:
            return [payload for t, payload, _, _ in self.messages if t == topic]

    def json(self, topic: str) -> List[Dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic)]

    def last(self, topic: str) -> Optional[Dict[str, Any]]:
        got = self.json(topic)
        return got[-1] if got else None

    def topics_seen(self) -> List[str]:
        with self.lock:
            return sorted({t for t, _, _, _ in self.messages})

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kw).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

