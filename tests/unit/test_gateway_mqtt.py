"""The gateway's MQTT bridge against a real Mosquitto started by the tests:
states, events and Home Assistant discovery; actions for the local machines
the configuration allows (and refusals); a broker restart in the middle of a
run and a broker that is not there at first (nothing lost, states current);
a late subscriber (retained states); a restarted gateway resuming from its
acknowledged cursors."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, List

import pytest

from coremachine_embedded import commands
from coremachine_embedded.gateway import Gateway
from coremachine_embedded.gateway import config as gwconfig
from coremachine_embedded.gateway.metrics import render
from coremachine_embedded.gateway.mqtt_bridge import MqttBridge

from tests.fault.hostile import run
from tests.unit.fleet import MACHINE_REF, SimDevice, check_copy, gateway_toml, holds, \
    wait_for
from tests.mqtt_broker import Broker, Recorder, need_broker


@pytest.fixture(autouse=True)
def _broker_available() -> None:
    need_broker()


def make_config(tmp_path: Any, devices: List[SimDevice], broker_url: str,
                locals_: str = "") -> gwconfig.GatewayConfig:
    text = gateway_toml(str(tmp_path / "replicas"), devices) + locals_ + (
        '[mqtt]\nurl = "%s"\nretry_min = 0.2\nretry_max = 0.5\n' % broker_url)
    return gwconfig.loads(text, str(tmp_path / "gateway.toml"))


def local_valve(tmp_path: Any, actions: str = '["READING"]') -> str:
    store = str(tmp_path / "valve")
    commands.init(store, MACHINE_REF, None, False, "sync")[0].close()
    return '[[local]]\nname = "valve"\nstore = "%s"\nactions = %s\n' % (store, actions)


async def start(cfg: gwconfig.GatewayConfig) -> Gateway:
    gw = Gateway(cfg)
    await gw.start()
    assert cfg.mqtt is not None
    gw.bridge = MqttBridge(cfg.mqtt, gw)
    gw.bridge.start()
    return gw


async def stop(gw: Gateway, *devices: SimDevice) -> None:
    """Stop the bridge and the gateway, then the simulated devices."""
    await gw.bridge.stop()
    await gw.stop()
    for dev in devices:
        await dev.down()
        dev.close()


def run_with_broker(broker: Broker, main: Any, timeout: float, *recorders: Recorder) -> None:
    try:
        run(main, timeout=timeout)
    finally:
        for rec in recorders:
            rec.close()
        broker.close()


def indexes(rec: Recorder, name: str) -> List[int]:
    return [e["index"] for e in rec.json("coremachine/%s/events" % name)]


def test_states_events_and_home_assistant_discovery(tmp_path) -> None:
    broker = Broker(persistence=True)
    rec = Recorder(broker, ["coremachine/#", "homeassistant/#"])

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "kitchen").up()
        gw = await start(make_config(tmp_path, [dev], broker.address, local_valve(tmp_path)))
        try:
            await wait_for(lambda: rec.last("coremachine/kitchen/state") is not None)
            for celsius in (18.0, 17.5, 21.0):       # heating, heating, idle
                dev.reading(celsius)
            await wait_for(lambda: indexes(rec, "kitchen") == [0, 1, 2], what="three events")
            await wait_for(lambda: (rec.last("coremachine/kitchen/state") or {}).get(
                "length") == 3, what="the state")
            events = rec.json("coremachine/kitchen/events")
            assert [(e["event"], e["state"]) for e in events] == [
                ("READING", "heating"), ("READING", "heating"), ("READING", "idle")]
            assert events[2]["value"] == {"t": 2, "celsius": 21.0}
            assert events[2]["context"]["celsius"] == 21.0 and events[2]["fork"] == 0
            state = rec.last("coremachine/kitchen/state")
            assert state["state"] == "idle" and state["context"]["readings"] == 3
            assert state["index"] == 2 and state["event"] == "READING"
            await wait_for(lambda: rec.on("coremachine/kitchen/availability")[-1:] == [b"online"])
            assert rec.on("coremachine/gateway/test/status")[-1] == b"online"

            sensor = rec.last("homeassistant/sensor/coremachine_kitchen/state/config")
            assert sensor["state_topic"] == "coremachine/kitchen/state"
            assert sensor["value_template"] == "{{ value_json.state }}"
            assert sensor["device_class"] == "enum"
            assert set(sensor["options"]) == {"idle", "heating", "off"}
            assert sensor["device"]["identifiers"] == ["coremachine_kitchen"]
            topics = rec.topics_seen()
            fields = {t.split("/")[3] for t in topics
                      if t.startswith("homeassistant/sensor/coremachine_kitchen/context_")}
            # numeric fields, once they are numbers (celsius was null at first)
            assert {"context_celsius", "context_readings", "context_target"} <= fields
            celsius = rec.last("homeassistant/sensor/coremachine_kitchen/context_celsius/config")
            assert celsius["value_template"] == '{{ value_json.context["celsius"] }}'
            assert celsius["state_class"] == "measurement"
            button = rec.last("homeassistant/button/coremachine_valve/action_READING/config")
            assert button["command_topic"] == "coremachine/valve/action"
            assert json.loads(button["payload_press"]) == {"event": "READING"}
            # local machines appear too, with their state
            assert rec.last("coremachine/valve/state")["state"] == "idle"
            page = render(gw)
            assert "coremachine_mqtt_connected 1" in page
            assert 'coremachine_mqtt_published_total{kind="events"} 3' in page
        finally:
            await stop(gw, dev)
    run_with_broker(broker, main, 60, rec)


def test_actions_only_for_what_the_configuration_allows(tmp_path) -> None:
    broker = Broker(persistence=True)
    rec = Recorder(broker, ["coremachine/+/action/reply", "replies/#"])

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "kitchen").up()
        gw = await start(make_config(tmp_path, [dev], broker.address, local_valve(tmp_path)))
        try:
            await wait_for(lambda: gw.bridge.listening and rec.subscribed.is_set()
                           and gw.locals["valve"].machine is not None)
            reply = "coremachine/valve/action/reply"
            rec.publish("coremachine/valve/action", json.dumps(
                {"event": "READING", "value": {"t": 1, "celsius": 12.5}, "id": 7}).encode())
            await wait_for(lambda: len(rec.on(reply)) == 1, what="the first reply")
            ok = rec.json(reply)[0]
            assert ok["ok"] and ok["id"] == 7 and ok["state"] == "heating" and ok["index"] == 0
            assert gw.locals["valve"].core.length == 1
            # MQTT 5 request/response: the reply goes to the response topic, correlated
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "replies/me"
            props.CorrelationData = b"req-42"
            rec.publish("coremachine/valve/action", b'{"event": "READING", "value": '
                        b'{"t": 2, "celsius": 25}}', properties=props)
            await wait_for(lambda: rec.on("replies/me"), what="the response-topic reply")
            (_, payload, _, p) = [m for m in rec.messages if m[0] == "replies/me"][0]
            assert json.loads(payload)["state"] == "idle" and p.CorrelationData == b"req-42"
            # refused: an event the configuration does not list, a followed device,
            # a name nobody has; rejected: bad JSON, a value the action cannot take
            rec.publish("coremachine/valve/action", b'{"event": "SHUTDOWN"}')
            rec.publish("coremachine/kitchen/action", b'{"event": "READING"}')
            rec.publish("coremachine/nobody/action", b"READING")
            rec.publish("coremachine/valve/action", b'{"event": ')
            rec.publish("coremachine/valve/action", b'{"event": "READING", "value": 3}')
            await wait_for(lambda: len(rec.on(reply)) == 4 and len(rec.on(
                "coremachine/kitchen/action/reply")) == 1 and len(rec.on(
                    "coremachine/nobody/action/reply")) == 1, what="the other replies")
            valve = rec.json(reply)
            assert not valve[1]["ok"] and valve[1]["code"] == "NOT_ALLOWED"
            for topic in ("coremachine/kitchen/action/reply", "coremachine/nobody/action/reply"):
                assert rec.json(topic)[0]["code"] == "NOT_ALLOWED"
            assert all(not r["ok"] and r["error"] and r["code"] != "NOT_ALLOWED"
                       for r in valve[2:]), valve
            assert gw.locals["valve"].core.length == 2        # nothing else was written
            assert gw.bridge.counters["actions_ok"] == 2
            assert gw.bridge.counters["actions_refused"] == 3
            assert gw.bridge.counters["actions_rejected"] == 2
        finally:
            await stop(gw, dev)
    run_with_broker(broker, main, 60, rec)


def test_broker_restart_mid_run_loses_nothing_and_late_subscribers_get_states(tmp_path,
                                                                              caplog) -> None:
    caplog.set_level(logging.INFO, logger="coremachine_embedded.gateway")
    broker = Broker(persistence=True)
    rec = Recorder(broker, ["coremachine/+/events"], client_id="persistent-sub",
                   persistent=True)

    async def main() -> None:
        devs = [await SimDevice(str(tmp_path), n).up() for n in ("a", "b")]
        gw = await start(make_config(tmp_path, devs, broker.address))
        try:
            await wait_for(lambda: gw.bridge.connected and rec.subscribed.is_set())
            for _ in range(5):
                for d in devs:
                    d.reading(15.0)
            await wait_for(lambda: all(indexes(rec, d.name) == list(range(5)) for d in devs),
                           what="events before the restart")
            broker.stop()
            await wait_for(lambda: not gw.bridge.connected, what="the bridge to notice")
            for i in range(20):                     # the gateway follows on, the broker away
                for d in devs:
                    d.reading(15.0 + i % 10)
            await wait_for(lambda: all(gw.devices[d.name].core.contiguous_length == 25
                                       for d in devs), what="the gateway to follow")
            broker.start()
            await wait_for(lambda: all(set(indexes(rec, d.name)) == set(range(25))
                                       for d in devs), timeout=30, what="the catch-up")
            for d in devs:
                seen = indexes(rec, d.name)
                assert seen[:5] == list(range(5)) and sorted(set(seen)) == list(range(25))
                check_copy(gw.devices[d.name].core, d.core)
            late = Recorder(broker, ["coremachine/+/state"])
            try:
                await wait_for(lambda: all(late.last("coremachine/%s/state" % d.name)
                                           for d in devs), what="retained states")
                for d in devs:
                    state = late.last("coremachine/%s/state" % d.name)
                    assert state["length"] == 25 and state["context"]["readings"] == 25
                assert all(retained for _, _, retained, _ in late.messages)
            finally:
                late.close()
            assert gw.bridge.counters["connects"] == 2
        finally:
            await stop(gw, *devs)
    run_with_broker(broker, main, 90, rec)
    assert "MQTT: lost the broker" in caplog.text


def test_an_unreachable_broker_is_retried_and_logged_then_caught_up(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="coremachine_embedded.gateway")
    broker = Broker(persistence=True, start=False)   # not started yet

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "early").up()
        gw = await start(make_config(tmp_path, [dev], broker.address))
        try:
            await wait_for(lambda: gw.devices["early"].core is not None)
            for _ in range(4):
                dev.reading()                  # published later, from the log
            await wait_for(lambda: gw.devices["early"].core.contiguous_length == 4)
            await wait_for(lambda: gw.bridge.counters["connect_failures"] >= 2,
                           what="connection attempts")
            assert not gw.bridge.connected
            await asyncio.to_thread(broker.start)
            rec = Recorder(broker, ["coremachine/early/#"])
            try:
                await wait_for(lambda: indexes(rec, "early") == [0, 1, 2, 3] or len(
                    rec.json("coremachine/early/events")) >= 4, timeout=30, what="catch-up")
                assert sorted(set(indexes(rec, "early"))) == [0, 1, 2, 3]
                await wait_for(lambda: (rec.last("coremachine/early/state") or {}).get(
                    "length") == 4, what="the current state")
            finally:
                rec.close()
        finally:
            await stop(gw, dev)
    run_with_broker(broker, main, 60)
    assert "MQTT: broker 127.0.0.1:%d unreachable" % broker.port in caplog.text


def test_a_restarted_gateway_resumes_from_its_acknowledged_cursors(tmp_path) -> None:
    broker = Broker(persistence=True)
    rec = Recorder(broker, ["coremachine/+/events"])

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "resume").up()
        cfg = make_config(tmp_path, [dev], broker.address)
        gw = await start(cfg)
        try:
            await wait_for(lambda: gw.bridge.connected)
            dev.reading()
            dev.reading()
            await wait_for(lambda: indexes(rec, "resume") == [0, 1])
        finally:
            await stop(gw)
        for _ in range(3):
            dev.reading()                     # while no gateway runs
        gw = await start(cfg)
        try:
            await wait_for(lambda: sorted(set(indexes(rec, "resume"))) == [0, 1, 2, 3, 4],
                           what="the entries appended while the gateway was down")
            assert indexes(rec, "resume")[:2] == [0, 1]
        finally:
            await stop(gw, dev)
    run_with_broker(broker, main, 60, rec)


def test_tls_and_a_password_from_the_configuration(tmp_path) -> None:
    """The bridge connects over TLS (the broker's CA from ``ca_file``) with a
    user and a ``password_file``, and publishes the device's state; with a
    wrong password it is refused, logs it and retries, and nothing crashes."""
    broker = Broker(users={"gw": "s3cret"}, tls=True)
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "bad").write_text("wrong\n")

    def cfg(password_file: str, devices: List[SimDevice]) -> gwconfig.GatewayConfig:
        text = gateway_toml(str(tmp_path / "replicas"), devices) + (
            '[mqtt]\nurl = "mqtts://127.0.0.1:%d"\nusername = "gw"\npassword_file = "%s"\n'
            'ca_file = "%s"\nretry_min = 0.2\nretry_max = 0.5\n'
            % (broker.port, tmp_path / password_file, broker.ca))
        return gwconfig.loads(text, str(tmp_path / "gateway.toml"))

    async def main() -> None:
        dev = await SimDevice(str(tmp_path), "kitchen").up()
        dev.reading(19.0)
        gw = await start(cfg("pw", [dev]))
        try:
            await wait_for(lambda: holds(gw, dev) and 'coremachine_mqtt_published_total'
                           '{kind="states"} 0' not in render(gw)
                           and "coremachine_mqtt_connected 1" in render(gw),
                           what="a state published over TLS")
        finally:
            await stop(gw)
        gw = await start(cfg("bad", [dev]))
        try:
            await wait_for(lambda: gw.bridge.counters.get("connect_failures", 0) >= 2,
                           what="refused connections retried")
            assert "coremachine_mqtt_connected 0" in render(gw)
        finally:
            await stop(gw, dev)
    try:
        run(main, timeout=60)
    finally:
        broker.close()
