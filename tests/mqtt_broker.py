"""A real Mosquitto broker for the MQTT tests (sync and gateway), a recording
MQTT 5 client, and a TCP proxy between a client and the broker that can drop,
reorder and cut MQTT packets.

:class:`Broker` writes its own config (a free port on 127.0.0.1, optionally a
password file, TLS and persistence) into a temporary directory, starts
``mosquitto`` (apt package ``mosquitto``; `sh .ci/ensure-deps.sh --test`) and
stops it by its pid; the system's own broker on 1883, if any, is never used.
"""
from __future__ import annotations

import asyncio
import getpass
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

LOCAL = "127.0.0.1"


def _find_mosquitto() -> Optional[str]:
    for path in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if path and os.access(path, os.X_OK):
            return path
    return None


MOSQUITTO = _find_mosquitto()
NO_MOSQUITTO = "mosquitto is not installed (sh .ci/ensure-deps.sh --test)"
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason=NO_MOSQUITTO)


def need_broker() -> None:
    """Skip the calling test without mosquitto or paho-mqtt."""
    if MOSQUITTO is None:
        pytest.skip(NO_MOSQUITTO)
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install "
                        "'paho-mqtt>=2')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((LOCAL, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One mosquitto process on 127.0.0.1.

    :param users: ``{name: password}``: anonymous clients are refused.
    :param tls: serve TLS with a fresh CA (``self.ca`` is its certificate).
    :param persistence: keep sessions and retained messages across restarts.
    :param extra: more lines of mosquitto.conf.
    :param start: start it now (else :meth:`start` later, on the port already chosen).
    """

    def __init__(self, users: Optional[Dict[str, str]] = None, tls: bool = False,
                 persistence: bool = False, extra: Tuple[str, ...] = (),
                 start: bool = True) -> None:
        if MOSQUITTO is None:
            raise FileNotFoundError(NO_MOSQUITTO)
        self.path = MOSQUITTO
        self.dir = tempfile.mkdtemp(prefix="mosquitto-")
        self.port = free_port()
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.log = os.path.join(self.dir, "mosquitto.log")
        self.ca: Optional[str] = None
        lines = ["listener %d %s" % (self.port, LOCAL),
                 "user %s" % getpass.getuser(),   # stay who we are (root would switch)
                 "set_tcp_nodelay true",          # latency: see docs/protocol.md
                 "max_queued_messages 100000",
                 "log_dest file %s" % self.log,
                 "persistence %s" % ("true" if persistence else "false")]
        if persistence:
            lines.append("persistence_location %s/" % self.dir)
        if users:
            passwords = os.path.join(self.dir, "passwords")
            open(passwords, "w").close()
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", passwords, name, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", "password_file %s" % passwords]
        else:
            lines.append("allow_anonymous true")
        if tls:
            self.ca, cert, key = make_certificates(self.dir)
            lines += ["cafile %s" % self.ca, "certfile %s" % cert, "keyfile %s" % key]
        lines += list(extra)
        self.config = os.path.join(self.dir, "mosquitto.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        if start:
            self.start()

    @property
    def address(self) -> str:
        """``mqtt://127.0.0.1:PORT``, no topic prefix."""
        return "mqtt://%s:%d" % (LOCAL, self.port)

    def url(self, prefix: str = "test", scheme: str = "mqtt", auth: str = "",
            port: Optional[int] = None, query: str = "") -> str:
        return "%s://%s%s:%d/%s%s" % (scheme, auth + "@" if auth else "", LOCAL,
                                      port or self.port, prefix, "?" + query if query else "")

    def start(self) -> None:
        self.proc = subprocess.Popen([self.path, "-c", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start: %s" % self.log_text())
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, down: float = 0.5) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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
        self.client.connect(LOCAL, broker.port, keepalive=10,
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


def make_certificates(directory: str) -> Tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 (openssl); their paths."""
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr = os.path.join(directory, "server.key"), os.path.join(directory, "server.csr")
    cert, ext = os.path.join(directory, "server.pem"), os.path.join(directory, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=coremachine test CA", "-keyout", ca_key, "-out", ca)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", cert)
    return ca, cert, key


# --- a proxy that drops, reorders and cuts MQTT packets ----------------------------------

PUBLISH, PUBACK = 3, 4


def _packet_length(buf: bytes) -> Optional[int]:
    """Total length of the MQTT packet at the start of ``buf``, if complete."""
    value, shift = 0, 0
    for i in range(1, min(len(buf), 5)):
        value |= (buf[i] & 0x7F) << shift
        if not buf[i] & 0x80:
            total = i + 1 + value
            return total if len(buf) >= total else None
        shift += 7
    return None


def _publish_id(packet: bytes) -> Optional[int]:
    """The packet id of a QoS 1 PUBLISH."""
    if packet[0] >> 4 != PUBLISH or (packet[0] >> 1) & 3 != 1:
        return None
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    topic_len = int.from_bytes(packet[i:i + 2], "big")
    pos = i + 2 + topic_len
    return int.from_bytes(packet[pos:pos + 2], "big")


class MQTTProxy:
    """Between clients and a broker on 127.0.0.1: forwards whole MQTT packets;
    drops a QoS 1 PUBLISH with probability ``loss`` (answering the sender with
    the PUBACK the broker would have sent, as a broker that accepts and then
    loses a message does) and holds one back behind the next with probability
    ``reorder``, both ways.  :meth:`cut` closes every connection and refuses
    new ones until :meth:`restore` (a device whose network went to sleep)."""

    def __init__(self, broker_port: int, loss: float = 0.0, reorder: float = 0.0,
                 seed: int = 1) -> None:
        self.broker_port = broker_port
        self.loss = loss
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.port = 0
        self.down = False
        self.counters: Dict[str, int] = {"forwarded": 0, "dropped": 0, "reordered": 0,
                                         "connections": 0, "refused": 0}
        self._server: Optional[asyncio.AbstractServer] = None
        self._writers: List[asyncio.StreamWriter] = []
        self._tasks: Set["asyncio.Task[Any]"] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOCAL, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.down = True
        for w in self._writers:
            w.close()
        self._writers = []

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.counters["refused"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: Optional[asyncio.StreamWriter] = None
        try:
            up_reader, up_writer = await asyncio.open_connection(LOCAL, self.broker_port)
            self.counters["connections"] += 1
            self._writers += [writer, up_writer]
            await asyncio.gather(self._pump(reader, up_writer, writer),
                                 self._pump(up_reader, writer, up_writer),
                                 return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass  # the broker is down, or the proxy closes: the connection ends
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    back: asyncio.StreamWriter) -> None:
        buf = b""
        held: List[bytes] = []   # a publish held back: it goes after the next one

        def release() -> None:
            if held and not dst.is_closing():
                dst.write(held.pop())
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await src.read(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    n = _packet_length(buf)
                    if n is None:
                        break
                    packet, buf = buf[:n], buf[n:]
                    pid = _publish_id(packet)
                    if pid is not None and self.rng.random() < self.loss:
                        self.counters["dropped"] += 1
                        back.write(bytes((PUBACK << 4, 2)) + pid.to_bytes(2, "big"))
                        continue
                    if pid is not None and not held and self.rng.random() < self.reorder:
                        held.append(packet)
                        self.counters["reordered"] += 1
                        loop.call_later(0.05, release)  # or after 50 ms, if nothing follows
                        continue
                    dst.write(packet)
                    self.counters["forwarded"] += 1
                    if pid is not None:
                        release()
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


def counters_of(endpoint: Any) -> Dict[str, int]:
    """An endpoint's counters merged with its links' (prefixed ``link.``)."""
    out = dict(endpoint.counters)
    for link in endpoint._links:
        for k, v in getattr(link, "counters", {}).items():
            out["link." + k] = out.get("link." + k, 0) + v
    return out
