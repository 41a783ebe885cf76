# Board definition reader (contract 4). The host validates boards/<name>.json against its schema; the node
# only reads the same file (deployed as /board.json) and trusts the fields it needs.
import json


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
