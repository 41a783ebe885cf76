# The ESP32 side of node.appboot.build: machine.I2C buses, pins, ADC channels with attenuation, and the port's
# DHT reader, wired per the board definition. Imported only on a real board.
import machine

from node.hw import ATTN_INDEX

_ATTN_NAMES = ("ATTN_0DB", "ATTN_2_5DB", "ATTN_6DB", "ATTN_11DB")


def wiring(board):
    # (i2c_for, pin_for, adc_for, dht_readinto, pin_for_out, None): what node.appboot.build wires the drivers to.
    try:
        from esp import dht_readinto
    except ImportError:
        from machine import dht_readinto

    buses = {}

    def i2c_for(name):
        if name not in buses:
            b = board["buses"][name]
            buses[name] = machine.I2C(
                b.get("id", 0), scl=machine.Pin(b["scl"]), sda=machine.Pin(b["sda"]), freq=b.get("freq", 400000)
            )
        return buses[name]

    def pin_for(n):
        return machine.Pin(n, machine.Pin.OPEN_DRAIN, machine.Pin.PULL_UP)

    def adc_for(s):
        a = machine.ADC(machine.Pin(s["pin"]))
        a.atten(getattr(machine.ADC, _ATTN_NAMES[ATTN_INDEX[s["atten"]]]))
        return a

    return i2c_for, pin_for, adc_for, dht_readinto, lambda n: machine.Pin(n, machine.Pin.OUT), None
