# Model file loader for node.model (contract 3, host/edgefleet/model/modelfile.py, docs/model-file.md): checks the
# header, verifies the file in 256-byte chunks (sha256, optional HMAC), reads each section with readinto into
# one preallocated array and validates every tree index once. Imported by node.model.load() and released
# after it, so its code is not kept in the heap while the node runs.
import binascii
import hashlib
import struct
from array import array

from micropython import const

from node import features


class LoadError(Exception):
    # What is wrong with a model file; node.model.load() raises it as ModelError (this module does not import
    # node.model, which imports it).
    pass


MAGIC = b"EFML"
VERSION = const(1)
_HDR = "<4sHBBHHHHfIII"
_HDR_SIZE = const(32)
_KIND_TREES = const(1)
_KIND_MLP = const(2)
_KIND_GAUSS = const(3)
_FLAG_SIGNED = const(1)
_FLAG_DOWNGRADE = const(2)
VERSION_PATH = "model.ver"  # the highest model version this node accepted (anti-rollback), on its flash
TASKS = ("classify", "anomaly", "regress")
MAX_BODY = const(32768)  # 32 KB: the model's arrays fit the ESP32-DevKitC's ~110 KB heap beside the app
_QMAX = const(32767)


def _check_nodes(nodes, fmt, n_nodes, n_leaves, nf):
    # Every index validated once at load, so evaluation can neither loop (jumps go forward only) nor read
    # outside the arrays, whatever file it was given.
    for i in range(n_nodes):
        if fmt:
            b = 6 * i
            feat = nodes[b]
            ll = nodes[b + 1]
            if ll == 0xFF:
                if i + 1 >= n_nodes:
                    raise LoadError("tree node %d: left child past the last node" % i)
            elif ll >= n_leaves:
                raise LoadError("tree node %d points to leaf %d of %d" % (i, ll, n_leaves))
            kids = (nodes[b + 4] | (nodes[b + 5] << 8),)
        else:
            feat = nodes[4 * i] & 0xFF
            kids = (nodes[4 * i + 2], nodes[4 * i + 3])
        if feat >= nf:
            raise LoadError("tree node %d uses feature %d of %d" % (i, feat, nf))
        for c in kids:
            if c & 0x8000:
                if 0xFFFF - c >= n_leaves:
                    raise LoadError("tree node %d points to leaf %d of %d" % (i, 0xFFFF - c, n_leaves))
            elif c == 0 or i + c >= n_nodes:
                raise LoadError("tree node %d jumps to %d: not a later node" % (i, i + c))


def _hmac_pads(key):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[: len(key)] = key
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    return ipad, opad


def _verify(f, content_len, signed, key):
    # Hash the file in 256-byte chunks (sha256, and the HMAC's inner hash when a key is given); returns the
    # sha256 digest.
    h = hashlib.sha256()
    inner = None
    if key is not None:
        if not signed:
            raise LoadError("model file is not signed but a key is configured")
        ipad, opad = _hmac_pads(key)
        inner = hashlib.sha256(ipad)
    buf = bytearray(256)
    mv = memoryview(buf)
    f.seek(0)
    left = content_len
    while left:
        n = f.readinto(mv[: min(256, left)])
        if not n:
            raise LoadError("model file truncated")
        h.update(mv[:n])
        if inner is not None:
            inner.update(mv[:n])
        left -= n
    trailer = f.read(64)
    if len(trailer) != 64 or not _same(h.digest(), trailer[:32]):
        raise LoadError("model file sha256 mismatch (corrupt file)")
    if inner is not None:
        outer = hashlib.sha256(opad)
        outer.update(inner.digest())
        if not _same(outer.digest(), trailer[32:]):
            raise LoadError("model file signature does not verify with the configured key")
    return trailer[:32]


def _same(a, b):
    # Constant time: every byte is compared whatever the first difference, so the time taken does not tell
    # an attacker how many leading bytes of a forged MAC were right.
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def running_version():
    try:
        with open(VERSION_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _check_version(ver, flags):
    # Anti-rollback: an older model (perhaps one with a known flaw, validly signed back then) is refused unless
    # the operator signed this file as an explicit downgrade (flags bit 1, covered by the MAC).
    have = running_version()
    if ver < have and not flags & _FLAG_DOWNGRADE:
        raise LoadError(
            "model version %d is older than version %d this node ran: rollback refused (the operator can sign "
            "an explicit downgrade)" % (ver, have)
        )


def accept_version(ver):
    # Persisted after a successful load (atomic: tmp + rename).
    if ver == running_version():
        return
    import os

    try:
        with open(VERSION_PATH + ".tmp", "w") as f:
            f.write(str(ver))
        os.rename(VERSION_PATH + ".tmp", VERSION_PATH)
    except OSError as e:
        print("model: cannot record model version %d: %r" % (ver, e))

def _strings(buf, n_classes):
    pos = 0
    out = []

    def get(pos):
        n = buf[pos]
        return str(bytes(buf[pos + 1 : pos + 1 + n]), "utf-8"), pos + 1 + n

    model_id, pos = get(pos)
    sensor, pos = get(pos)
    nch = buf[pos]
    pos += 1
    chans = []
    for _ in range(nch):
        s, pos = get(pos)
        chans.append(s)
    for _ in range(n_classes):
        s, pos = get(pos)
        out.append(s)
    return model_id, sensor, tuple(chans), tuple(out)

def load(path, key, runner_cls, cmodel_cls):
    # The runner (a runner_cls, node.model.Runner, filled here), verified and accepted: its version becomes the
    # node's anti-rollback floor. cmodel_cls: node.model.CModel to run the model in our C module, or None for
    # the MicroPython implementation. Both are passed in so that this module never imports node.model.
    r = _open_and_load(path, key, runner_cls, cmodel_cls)
    accept_version(r.version)
    return r


def _open_and_load(path, key, runner_cls, cmodel_cls):
    if isinstance(key, str):  # config.json holds the key as hex
        try:
            key = binascii.unhexlify(key)
        except ValueError:
            raise LoadError("model_key in the config is not hex")
    try:
        f = open(path, "rb")
    except OSError:
        raise LoadError("model file %s not found" % path)
    try:
        return _load(f, key, runner_cls, cmodel_cls)
    except LoadError:
        raise
    except (ValueError, IndexError, UnicodeError, OSError, MemoryError) as e:
        raise LoadError("model file %s unreadable: %r" % (path, e))
    finally:
        f.close()

def _load(f, key, runner_cls, cmodel_cls):
    hdr = f.read(_HDR_SIZE)
    if len(hdr) < _HDR_SIZE or hdr[:4] != MAGIC:
        raise LoadError("not an edgefleet model file (bad magic)")
    _, ver, kind, task, nf, nc, window, hop, thr, slen, blen, flags = struct.unpack(_HDR, hdr)
    if ver != VERSION:
        raise LoadError("model file version %d, this node reads %d" % (ver, VERSION))
    if kind not in (_KIND_TREES, _KIND_MLP, _KIND_GAUSS) or task > 2:
        raise LoadError("unknown model kind %d / task %d" % (kind, task))
    if blen > MAX_BODY or slen > 4096 or nf > 127:
        raise LoadError("model too large for this node: body %d bytes (max %d), %d features" % (blen, MAX_BODY, nf))
    content = _HDR_SIZE + slen + 8 * nf + blen
    f.seek(0, 2)
    size = f.tell()
    if size != content + 64:
        raise LoadError("model file length %d, header says %d" % (size, content + 64))
    digest = _verify(f, content, flags & _FLAG_SIGNED, key)
    ver = flags >> 16
    _check_version(ver, flags)
    r = runner_cls()
    r.version = ver
    r.sha256 = binascii.hexlify(digest).decode()
    f.seek(_HDR_SIZE)
    sbuf = f.read(slen)
    r.model_id, r.sensor, r.channels, r.classes = _strings(sbuf, nc)
    del sbuf
    r.task = TASKS[task]
    r.window = window
    r.hop = hop
    r.threshold = None if thr != thr else thr
    r.n_features = nf
    if r.channels and features.count(len(r.channels)) != nf:
        raise LoadError("model has %d features, %d channels give %d" % (nf, len(r.channels), features.count(len(r.channels))))
    r._off = array("f", bytes(4 * nf))
    r._scale = array("f", bytes(4 * nf))
    f.readinto(r._off)
    f.readinto(r._scale)
    r._feat = array("f", bytes(4 * nf))
    r._q = array("h", bytes(2 * nf))
    r._kind = kind
    r._regress = task == 2
    r._c = None
    r._out = array("f", bytes(4 * max(1, nc)))
    body_start = f.tell()
    if cmodel_cls is not None:
        # The C module holds the file's bytes plus, for compact trees, emlearn's 8-byte nodes: use it when that
        # fits the same budget, else the MicroPython runner below (which evaluates compact nodes in place).
        need = size
        if kind == _KIND_TREES:
            n_nodes, fmt = struct.unpack("<2xH3xB", f.read(8))
            need += 8 * n_nodes if fmt == 1 else 0
        if need <= MAX_BODY:
            f.seek(0)
            blob = f.read()
            try:
                r._c = cmodel_cls(blob)
            except ValueError as e:
                raise LoadError("model file rejected by the C module: %s" % e)
            r.backend = "cmodule"
            return r
        f.seek(body_start)
    # One function per model kind: the .mpy loader needs each function's bytecode in one block of heap.
    if kind == _KIND_TREES:
        _read_trees(r, f, body_start, blen, nf, nc)
    elif kind == _KIND_MLP:
        _read_mlp(r, f, nf, nc)
    else:
        _read_gauss(r, f, nf)
    return r


def _read_trees(r, f, body_start, blen, nf, nc):
    n_trees, n_nodes, n_leaves, leaf_bits, fmt = struct.unpack("<HHHBB", f.read(8))
    if fmt > 1 or leaf_bits not in (0, 32):
        raise LoadError("unknown tree node format %d / leaf bits %d" % (fmt, leaf_bits))
    node_size = 6 if fmt else 8
    nodes_at = (8 + 2 * n_trees + 3) & ~3
    leaves_at = nodes_at + ((node_size * n_nodes + 3) & ~3)
    if leaves_at + n_leaves * (4 if leaf_bits else 1) > blen:
        raise LoadError("tree arrays exceed the model body")
    r._n_trees = n_trees
    r._roots = array("H", bytes(2 * n_trees))
    f.readinto(r._roots)
    f.seek(body_start + nodes_at)
    r._fmt = fmt
    if fmt:  # compact 6-byte nodes, evaluated in place
        r._nodes = bytearray(6 * n_nodes)
    else:  # emlearn's EmlTreesNode layout, 4 halfwords a node
        r._nodes = array("H", bytes(8 * n_nodes))
    f.readinto(r._nodes)
    f.seek(body_start + leaves_at)
    if leaf_bits == 32:
        r._leaves = array("f", bytes(4 * n_leaves))
    else:
        r._leaves = bytearray(n_leaves)
    f.readinto(r._leaves)
    for t in range(n_trees):
        if r._roots[t] >= n_nodes:
            raise LoadError("corrupt tree root")
    _check_nodes(r._nodes, fmt, n_nodes, n_leaves, nf)
    r._leafidx = array("H", bytes(2 * n_trees))
    r._votes = array("H", bytes(2 * max(1, nc)))
    if not r._regress:
        for i in range(n_leaves):
            if r._leaves[i] >= nc:
                raise LoadError("tree leaf class %d of %d" % (r._leaves[i], nc))


def _read_mlp(r, f, nf, nc):
    (n_layers,) = struct.unpack("<B3x", f.read(4))
    r._layers = []
    width = nf
    widest = nf
    for _ in range(n_layers):
        n_in, n_out, act = struct.unpack("<HHB3x", f.read(8))
        if n_in != width:
            raise LoadError("MLP layer input %d does not follow %d" % (n_in, width))
        w = array("f", bytes(4 * n_in * n_out))
        f.readinto(w)
        b = array("f", bytes(4 * n_out))
        f.readinto(b)
        r._layers.append((n_in, n_out, act, w, b))
        width = n_out
        widest = max(widest, n_out)
    if r.task == "classify" and width != nc:
        raise LoadError("MLP has %d outputs for %d classes" % (width, nc))
    r._act_a = array("f", bytes(4 * widest))
    r._act_b = array("f", bytes(4 * widest))
    r._out = array("f", bytes(4 * width))


def _read_gauss(r, f, nf):
    r._mean = array("f", bytes(4 * nf))
    f.readinto(r._mean)
    r._prec = array("f", bytes(4 * nf * nf))
    f.readinto(r._prec)
    r._act_a = array("f", bytes(4 * nf))
    if r.threshold is None:
        raise LoadError("anomaly model without a threshold")
