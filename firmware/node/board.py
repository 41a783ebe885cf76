# Board definition reader (contract 4). The host validates boards/<name>.json against its schema; the node
# only reads the same file (deployed as /board.json) and trusts the fields it needs.
import json

# The node's files on its flash root (deploy writes them, node.app and node.appboot read them).
BOARD_PATH = "board.json"
CONFIG_PATH = "config.json"


def to_int(v):
    # Sizes and offsets are ints or hex strings ("0x1000"), as in the schema.
    return v if isinstance(v, int) else int(v, 16)


def load(path="board.json"):
    with open(path) as f:
        return json.load(f)


def partition(board, name):
    # (offset, size) of a named flash partition, or None.
    for p in board["flash"]["partitions"]:
        if p["name"] == name:
            return to_int(p["offset"]), to_int(p["size"])
    return None


def is_sim(board):
    return board["chip"] == "sim"


def sensor(board, name):
    for s in board["sensors"]:
        if s["name"] == name:
            return s
    return None


def brief(board):
    # The fields node.config's validation reads (name, sensors' name/type/max_rate_hz, outputs' names), kept
    # by the running node so set_config validates without parsing board.json again: the whole dict is ~7 KB
    # of heap on the 64-bit port, too much to take from a running node's fragmented heap at once.
    sensors = []
    for s in board.get("sensors", ()):
        b = {"name": s["name"], "type": s.get("type")}
        if s.get("max_rate_hz") is not None:
            b["max_rate_hz"] = s["max_rate_hz"]
        sensors.append(b)
    return {"name": board.get("name", "?"), "sensors": sensors,
            "outputs": [{"name": o["name"]} for o in board.get("outputs", ())]}
