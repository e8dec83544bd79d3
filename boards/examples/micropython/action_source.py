# MicroPython example: an action source on an RP2040 / ESP32.
#
# Reads a sensor and sends actions to a Raspberry Pi's machine over the UART,
# one action per frame with the same framing the Pi's serial sync uses:
# COBS(json + CRC32) 0x00.  Copy this file and coremachine_embedded/sync/framing.py
# to the board; on the Pi run `sensor_node.py --actions serial:///dev/serial0`.
#
# On the MicroPython unix port (tests, no hardware) the UART is a path:
#     micropython action_source.py /dev/pts/7 20
import sys
import time

try:
    import json
except ImportError:  # very old ports
    import ujson as json

from framing import encode_frame

UNIX = sys.platform not in ("rp2", "esp32", "esp8266")


def open_uart(target):
    if UNIX:
        return open(target, "wb")
    from machine import UART, Pin  # noqa: F401 - board only
    if sys.platform == "rp2":
        return UART(0, baudrate=115200, tx=Pin(0), rx=Pin(1))
    return UART(2, baudrate=115200, tx=17, rx=16)


def read_celsius(t):
    if UNIX:
        return 17.5 + (t % 8) * 0.5            # a ramp crossing the thermostat's bounds
    import machine  # RP2040 internal sensor on ADC 4
    adc = machine.ADC(4)
    volts = adc.read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else None
    count = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    uart = open_uart(target)
    t = 0
    while count < 0 or t < count:
        message = {"event": "READING", "value": {"t": t, "celsius": read_celsius(t)}}
        uart.write(encode_frame(json.dumps(message).encode()))
        t += 1
        time.sleep(0.05 if UNIX else 5)
    if UNIX:
        uart.close()


main()
