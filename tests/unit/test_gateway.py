"""The gateway daemon in-process, on real stores and real UDP sockets on
127.0.0.1: live following of several devices over one shared socket,
reloading (devices added, removed, kept), devices going away and coming
back, failing over between URLs, stores that cannot be opened yet, local
machines served on the listen URLs, and the metrics page."""
from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Dict, List

from coremachine_embedded import Core, commands
from coremachine_embedded.errors import StoreLockedError
from coremachine_embedded.gateway import Gateway
from coremachine_embedded.gateway import config as gwconfig
from coremachine_embedded.gateway.metrics import MetricsServer, render
from coremachine_embedded.sync import Endpoint, UDPLink

from tests.fault.hostile import run
from tests.unit.fleet import MACHINE_REF, SimDevice, check_copy, free_udp_port, gateway_toml, \
    holds, wait_for


def config(tmp_path, devices: List[SimDevice], extra: str = "") -> gwconfig.GatewayConfig:
    path = str(tmp_path / "gateway.toml")
    return gwconfig.loads(gateway_toml(str(tmp_path / "replicas"), devices, extra), path)


def metric(page: str, name: str, **labels: str) -> float:
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % want) if want else ""),
                  page, re.M)
    assert m, "no %s{%s} in the page" % (name, want)
    return float(m.group(1))


def test_follows_a_fleet_live_and_reloads_without_restarting(tmp_path) -> None:
    async def main() -> None:
        devs = [await SimDevice(str(tmp_path), n).up() for n in ("a", "b", "c")]
        for d in devs:
            d.reading(18.0)
            d.reading(19.0)
        gw = Gateway(config(tmp_path, devs))
        changed: List[str] = []
        gw.on_change(lambda m: changed.append(m.name))
        await gw.start()
        try:
            await wait_for(lambda: all(holds(gw, d) for d in devs), what="first catch-up")
            links = gw.links.links()
            assert len(links) == 1 and links[0].users == 3       # one socket for all
            for d in devs:
                d.reading(21.5)                                    # live
            await wait_for(lambda: all(holds(gw, d) for d in devs), what="live entries")
            for d in devs:
                check_copy(gw.devices[d.name].core, d.core)
            assert set(changed) == {"a", "b", "c"}

            kept = gw.devices["a"].core
            new = await SimDevice(str(tmp_path), "d").up()
            new.reading()
            await gw.reload(config(tmp_path, [devs[0], devs[1], new]))
            assert gw.devices["a"].core is kept                   # untouched
            assert "c" not in gw.devices
            Core(str(tmp_path / "replicas" / "c")).close()         # closed: its lock is free
            await wait_for(lambda: holds(gw, new), what="the added device")
            devs[0].reading()
            await wait_for(lambda: holds(gw, devs[0]), what="a kept device")
            devs.append(new)
        finally:
            await gw.stop()
            for d in devs:
                await d.down()
        for d in devs:
            with Core(str(tmp_path / "replicas" / d.name)) as replica:
                if d.name != "c":
                    check_copy(replica, d.core)
            d.close()
    run(main, timeout=90)


def test_a_device_goes_away_and_comes_back(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="coremachine_embedded.gateway")

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "away").up()
        dev.reading()
        gw = Gateway(config(tmp_path, [dev]))
        await gw.start()
        member = gw.devices["away"]
        try:
            await wait_for(lambda: holds(gw, dev) and member.online, what="contact")
            await asyncio.sleep(5)     # idle for 2.5 silence limits: pinged, still in contact
            assert member.online and member.reconnects == 0
            await dev.down()
            for _ in range(5):
                dev.reading()          # appended while the gateway cannot reach it
            await wait_for(lambda: not member.online, what="contact lost")
            await dev.up()             # back on the same port, a new session
            await wait_for(lambda: holds(gw, dev) and member.online, what="catch-up")
            check_copy(member.core, dev.core)
            assert member.reconnects == 1
            assert gw.links.links()[0].contacts_regained == 1
            page = render(gw)
            assert metric(page, "coremachine_device_reconnects_total", device="away") == 1
            assert metric(page, "coremachine_link_reconnects_total", link="udp") == 1
        finally:
            await gw.stop()
            await dev.down()
            dev.close()
    run(main, timeout=60)
    text = caplog.text
    assert "device away: no answer on %s" % ("udp://127.0.0.1:%d" % free_port_of(text)) in text
    assert text.count("device away: in contact") == 2


def free_port_of(text: str) -> int:
    return int(re.search(r"no answer on udp://127\.0\.0\.1:(\d+)", text).group(1))


def test_fails_over_to_the_next_url_and_retries_what_cannot_open(tmp_path) -> None:
    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "multi").up()
        dev.reading()
        dead = "udp://127.0.0.1:%d" % free_udp_port()         # nobody answers there
        text = gateway_toml(str(tmp_path / "replicas"), []) + (
            '[[device]]\nname = "multi"\nkey = "%s"\nurls = ["udp://no-such-host.invalid:7000",'
            ' "%s", "%s"]\n' % (dev.core.key.hex(), dead, dev.url))
        gw = Gateway(gwconfig.loads(text, str(tmp_path / "gateway.toml")))
        await gw.start()
        member = gw.devices["multi"]
        try:
            await wait_for(lambda: holds(gw, dev), timeout=30, what="failover to the live URL")
            assert member.url == dev.url and member.open_failures >= 1
            check_copy(member.core, dev.core)
        finally:
            await gw.stop()
            await dev.down()
            dev.close()
    run(main, timeout=60)


def test_a_store_that_cannot_be_opened_yet_is_retried(tmp_path, caplog) -> None:
    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "locked").up()
        dev.reading()
        holder = Core(str(tmp_path / "replicas" / "locked"), key=dev.core.key)
        gw = Gateway(config(tmp_path, [dev]))
        await gw.start()
        try:
            member = gw.devices["locked"]
            await wait_for(lambda: member.error is not None, what="the open error")
            assert "STORE_LOCKED" in member.error
            holder.close()                                     # released: it opens now
            await wait_for(lambda: holds(gw, dev), what="the retried open")
        finally:
            await gw.stop()
            await dev.down()
            dev.close()
    run(main, timeout=60)
    assert "device locked: %s" % StoreLockedError.code in caplog.text


def test_local_machines_are_served_on_the_listen_urls(tmp_path) -> None:
    store = str(tmp_path / "valve")
    commands.init(store, MACHINE_REF, None, False, "sync")[0].close()
    port = free_udp_port()
    text = ('[gateway]\nstore_dir = "r"\nlisten = ["udp://127.0.0.1:%d"]\n'
            '[[local]]\nname = "valve"\nstore = "%s"\nactions = ["READING"]\n' % (port, store))

    async def main() -> None:
        gw = Gateway(gwconfig.loads(text, str(tmp_path / "gateway.toml")))
        await gw.start()
        puller = Endpoint()
        link = UDPLink("127.0.0.1", 0)
        try:
            local = gw.locals["valve"]
            await wait_for(lambda: local.machine is not None, what="the local store to open")
            local.machine.action("READING", {"t": 0, "celsius": 15.0})
            replica = Core(str(tmp_path / "replica"), key=local.core.key, durability="none")
            await puller.attach(link)
            task = asyncio.ensure_future(puller.pull(replica, link, ("127.0.0.1", port),
                                                     live=True))
            await wait_for(lambda: replica.contiguous_length == 1, what="the pull")
            assert local.machine.action("READING", {"t": 1, "celsius": 22.0}).state == "idle"
            await wait_for(lambda: replica.contiguous_length == 2, what="live following")
            check_copy(replica, local.core)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            replica.close()
            page = render(gw)
            assert metric(page, "coremachine_local_length", machine="valve") == 2
            assert metric(page, "coremachine_link_requests_served_total",
                          link="listen udp://127.0.0.1:%d" % port) > 0
        finally:
            await puller.close()
            await gw.stop()
    run(main, timeout=60)


def test_metrics_page_over_http(tmp_path) -> None:
    async def main() -> Dict[str, str]:
        dev = await SimDevice(str(tmp_path), "m").up()
        for i in range(3):
            dev.reading(10.0 + i)
        gw = Gateway(config(tmp_path, [dev]))
        await gw.start()
        server = MetricsServer("127.0.0.1", 0, lambda: render(gw))
        await server.start()
        try:
            await wait_for(lambda: holds(gw, dev) and gw.devices["m"].online)
            # once the device knows the gateway holds all, new entries are pushed
            pooled = gw.links.links()[0]
            for i in range(20):
                dev.reading(20.0 + i)
                await wait_for(lambda: holds(gw, dev), what="a live entry")
                if pooled.endpoint.counters.get("pushes", 0):
                    break
                await asyncio.sleep(0.1)
            pages = {}
            for path in ("/metrics", "/nope"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                pages[path] = (await reader.read()).decode()
                writer.close()
            return pages
        finally:
            await server.close()
            await gw.stop()
            await dev.down()
            dev.close()
    pages = run(main, timeout=60)
    head, _, page = pages["/metrics"].partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK") and "text/plain; version=0.0.4" in head
    assert pages["/nope"].startswith("HTTP/1.1 404")
    length = metric(page, "coremachine_device_length", device="m")
    assert length > 3 and metric(page, "coremachine_device_writer_length", device="m") == length
    assert metric(page, "coremachine_link_pushes_total", link="udp") == 1
    assert metric(page, "coremachine_device_lag", device="m") == 0
    assert metric(page, "coremachine_device_up", device="m") == 1
    assert metric(page, "coremachine_device_last_contact_timestamp_seconds", device="m") > 1e9
    for name in ("rx_bytes", "tx_bytes", "rx_envelopes", "tx_envelopes", "blocks"):
        assert metric(page, "coremachine_link_%s_total" % name, link="udp") > 0, name
    assert metric(page, "coremachine_link_devices", link="udp") == 1
    assert metric(page, "process_resident_memory_bytes") > 1 << 20
    # every sample line belongs to a declared family (the exposition format)
    declared = set(re.findall(r"^# TYPE (\S+) (?:gauge|counter)$", page, re.M))
    for line in page.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r"[a-z_]+", line).group(0) in declared, line
            assert re.fullmatch(r'[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+]+', line), line
    assert os.path.isdir(str(tmp_path / "replicas"))


def test_devices_over_tcp_and_mqtt(tmp_path) -> None:
    """A device serving Hypercore's protocol on tcp:// and one served through
    a real Mosquitto broker (mqtt://): followed live like the UDP ones, with
    their links in the metrics; the tcp one reconnects after its server
    restarts."""
    from coremachine_embedded import sync
    from tests.mqtt_broker import Broker, need_broker
    need_broker()

    async def main() -> None:
        broker = Broker(persistence=True)
        over_tcp, over_mqtt = SimDevice(str(tmp_path), "t"), SimDevice(str(tmp_path), "m")
        port = free_udp_port()   # (free for TCP too on 127.0.0.1, as a rule)
        server = await sync.serve(over_tcp.core, "tcp://127.0.0.1:%d" % port)
        mqtt_url = broker.address + "/fleet"
        ep = await sync.serve(over_mqtt.core, mqtt_url)
        for d in (over_tcp, over_mqtt):
            d.reading(18.0)
        text = ('[gateway]\nname = "test"\nstore_dir = "%s"\nmachine = "%s"\nsilence = 2\n'
                'retry_min = 0.05\nretry_max = 0.5\n' % (tmp_path / "replicas", MACHINE_REF)
                + '[[device]]\nname = "t"\nkey = "%s"\nurl = "tcp://127.0.0.1:%d"\n'
                % (over_tcp.core.key.hex(), port)
                + '[[device]]\nname = "m"\nkey = "%s"\nurl = "%s"\n'
                % (over_mqtt.core.key.hex(), mqtt_url))
        gw = Gateway(gwconfig.loads(text, str(tmp_path / "gateway.toml")))
        await gw.start()
        try:
            both = (over_tcp, over_mqtt)
            await wait_for(lambda: all(holds(gw, d) for d in both), what="first catch-up")
            for d in both:
                d.reading(21.0)
            await wait_for(lambda: all(holds(gw, d) for d in both), what="live entries")
            page = render(gw)
            assert metric(page, "coremachine_link_devices", link="tcp://127.0.0.1:%d" % port) == 1
            assert metric(page, "coremachine_device_lag", device="t") == 0
            await server.close()                  # the tcp device restarts
            server = await sync.serve(over_tcp.core, "tcp://127.0.0.1:%d" % port)
            over_tcp.reading(22.0)
            await wait_for(lambda: holds(gw, over_tcp), what="the tcp device after its restart")
            for d in both:
                check_copy(gw.devices[d.name].core, d.core)
        finally:
            await gw.stop()
            await server.close()
            await ep.close()
            broker.close()
            for d in (over_tcp, over_mqtt):
                d.close()
    run(main, timeout=90)
