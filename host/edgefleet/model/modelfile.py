"""The model file (contract 3): what `edgefleet convert` writes and the node loads. Defined here, once.

Layout, all little-endian (docs/model-file.md is the reader's guide):

    header   32 bytes  "EFML", u16 version, u8 kind, u8 task, u16 n_features, u16 n_classes, u16 window,
                       u16 hop, f32 threshold (NaN = none), u32 strings_len, u32 body_len, u32 flags
    strings            u8-length-prefixed UTF-8: model_id, sensor, u8 n_channels + channels, class names
                       (n_classes of them); padded with zeros to a multiple of 4
    scaling            f32 offset[n_features], f32 scale[n_features]: q = clamp(floor((x - offset) * scale
                       + 0.5), -32767, 32767), the int16 features every model kind consumes
    body     body_len  the model, by kind (below), a multiple of 4 bytes
    sha256   32 bytes  over everything above
    hmac     32 bytes  HMAC-SHA256(key, everything above the sha256); zeros and flags bit 0 clear if unsigned

flags: bit 0 signed, bit 1 operator-signed downgrade, bits 16-31 the model version (u16; anti-rollback: a node
refuses a version lower than the one it ran unless bit 1 is set). All in the header, so covered by the MAC.

Kinds: 1 trees: u16 n_trees, u16 n_nodes, u16 n_leaves, u8 leaf_bits (0 = class per leaf, 32 = float value),
u8 node_format; u16 roots[n_trees] (pad to 4); nodes; (pad to 4); leaves: u8[n_leaves] or f32[n_leaves]; pad
to 4. node_format 0: emlearn's EmlTreesNode, 8 bytes (i8 feature, u8 0, i16 threshold, i16 left, i16 right;
child >= 0 is a relative jump, < 0 is leaf -child-1). node_format 1 (compact, preferred): 6 bytes in preorder
(u8 feature, u8 left leaf index or 0xFF = the left child is the next node, i16 threshold, i16 right as above);
readers expand it to format 0 in RAM.
2 mlp: u8 n_layers, 3 x 0; per layer u16 n_in, u16 n_out, u8 activation (0 linear, 1 relu, 2 softmax,
3 sigmoid, 4 tanh), 3 x 0, f32 weights[n_out][n_in], f32 bias[n_out]; input is q / 32768.
3 gauss (elliptic envelope): f32 mean[n], f32 precision[n][n]; score = squared Mahalanobis distance of q / 32768.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgefleetError

MAGIC = b"EFML"
VERSION = 1
HEADER = struct.Struct("<4sHBBHHHHfIII")
KIND_TREES, KIND_MLP, KIND_GAUSS = 1, 2, 3
TASKS = ("classify", "anomaly", "regress")
ACTIVATIONS = {"linear": 0, "identity": 0, "relu": 1, "softmax": 2, "sigmoid": 3, "logistic": 3, "tanh": 4}
FLAG_SIGNED = 1
FLAG_DOWNGRADE = 2
MAX_MODEL_VERSION = 0xFFFF
Q_MAX = 32767
Q_SPAN = 30000  # the training range maps to +-30000, leaving headroom for values a little outside it


@dataclass
class Scaling:
    """Per-feature int16 quantization fitted on the training features."""

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaling:
        lo, hi = x.min(axis=0), x.max(axis=0)
        half = (hi - lo) / 2.0
        scale = np.where(half > 0, Q_SPAN / np.where(half > 0, half, 1.0), 1.0)
        return cls((lo + half).astype(np.float32), scale.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Quantize in float32, exactly as the node does (same rounding, same clamp)."""
        v = (np.asarray(x, dtype=np.float32) - self.offset) * self.scale + np.float32(0.5)
        v = np.nan_to_num(v, nan=0.0, posinf=Q_MAX, neginf=-Q_MAX)  # NaN (a sensor gap) -> 0, as on the node
        return np.clip(np.floor(v), -Q_MAX, Q_MAX).astype(np.int16)


@dataclass
class ModelFile:
    model_id: str
    task: str
    sensor: str
    channels: tuple[str, ...]
    window: int
    hop: int
    n_features: int
    scaling: Scaling
    kind: int
    body: bytes
    classes: tuple[str, ...] = ()
    threshold: float | None = None
    signed: bool = False
    sha256: str = ""
    extra: dict = field(default_factory=dict)
    model_version: int = 0  # anti-rollback counter (flags bits 16-31)
    downgrade: bool = False  # the operator allows this file to replace a higher version (flags bit 1)


def flags_for(mf: ModelFile, signed: bool) -> int:
    if not 0 <= mf.model_version <= MAX_MODEL_VERSION:
        raise EdgefleetError(f"model version {mf.model_version} out of 0..{MAX_MODEL_VERSION}")
    return (FLAG_SIGNED if signed else 0) | (FLAG_DOWNGRADE if mf.downgrade else 0) | (mf.model_version << 16)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _strings(mf: ModelFile) -> bytes:
    out = bytearray()

    def put(s: str) -> None:
        raw = s.encode()
        if len(raw) > 255:
            raise EdgefleetError(f"name too long for the model file: {s[:40]}...")
        out.append(len(raw))
        out.extend(raw)

    put(mf.model_id)
    put(mf.sensor)
    out.append(len(mf.channels))
    for c in mf.channels:
        put(c)
    for c in mf.classes:
        put(c)
    return _pad4(bytes(out))


def encode(mf: ModelFile, key: bytes | None = None) -> bytes:
    if mf.task not in TASKS:
        raise ValueError(f"unknown task {mf.task}")
    strings = _strings(mf)
    body = _pad4(mf.body)
    thr = float("nan") if mf.threshold is None else float(mf.threshold)
    header = HEADER.pack(
        MAGIC, VERSION, mf.kind, TASKS.index(mf.task), mf.n_features, len(mf.classes), mf.window, mf.hop,
        thr, len(strings), len(body), flags_for(mf, bool(key)),
    )  # fmt: skip
    scaling = mf.scaling.offset.astype("<f4").tobytes() + mf.scaling.scale.astype("<f4").tobytes()
    content = header + strings + scaling + body
    digest = hashlib.sha256(content).digest()
    sig = hmac.new(key, content, hashlib.sha256).digest() if key else b"\0" * 32
    return content + digest + sig


def write(path: Path, mf: ModelFile, key: bytes | None = None) -> bytes:
    data = encode(mf, key)
    path.write_bytes(data)
    mf.sha256 = hashlib.sha256(data[:-64]).hexdigest()
    mf.signed = bool(key)
    return data


def read_key(path: Path) -> bytes:
    """A signing key file as its exact bytes (never stripped text: a key ending in a newline byte or a space
    is a different key). At least 16 bytes."""
    try:
        key = Path(path).read_bytes()
    except OSError as e:
        raise EdgefleetError(f"cannot read key file {path}: {e.strerror}") from None
    if len(key) < 16:
        raise EdgefleetError(f"key file {path} holds {len(key)} bytes; a key needs at least 16",
                             hint="head -c 32 /dev/urandom > model.key; chmod 600 model.key")  # fmt: skip
    return key


def resign(data: bytes, key: bytes, model_version: int | None = None, downgrade: bool = False,
           old_key: bytes | None = None) -> bytes:  # fmt: skip
    """The same model with a new version and/or downgrade permission, signed with `key` (the operator's act
    that lets a node go back to an older model). The input is decoded and checked first (with `old_key`)."""
    mf = decode(data, old_key)
    if model_version is not None:
        mf.model_version = model_version
    mf.downgrade = downgrade
    return encode(mf, key)


def decode(data: bytes, key: bytes | None = None) -> ModelFile:
    """Parse and verify (the host's reader, for tests, `convert` and `deploy`; the node has its own in
    node/modelload.py). Any malformed input is an EdgefleetError, never an IndexError or UnicodeError."""
    try:
        return _decode(bytes(data), key)
    except EdgefleetError:
        raise
    except (IndexError, ValueError, struct.error) as e:
        raise EdgefleetError(f"model file is corrupt: {type(e).__name__}: {e}") from None


def _decode(data: bytes, key: bytes | None) -> ModelFile:
    if len(data) < HEADER.size + 64 or data[:4] != MAGIC:
        raise EdgefleetError("not an edgefleet model file (bad magic or too short)")
    _magic, ver, kind, task, nf, nc, window, hop, thr, slen, blen, flags = HEADER.unpack_from(data)
    if ver != VERSION:
        raise EdgefleetError(f"model file version {ver}, this edgefleet reads {VERSION}")
    end = HEADER.size + slen + 8 * nf + blen
    if len(data) != end + 64:
        raise EdgefleetError(f"model file length {len(data)}, header says {end + 64}")
    content = data[:end]
    if hashlib.sha256(content).digest() != data[end : end + 32]:
        raise EdgefleetError("model file sha256 mismatch (corrupt file)")
    if key is not None:
        if not flags & FLAG_SIGNED:
            raise EdgefleetError("model file is not signed but a key is configured")
        if not hmac.compare_digest(hmac.new(key, content, hashlib.sha256).digest(), data[end + 32 :]):
            raise EdgefleetError("model file signature does not verify with this key")
    pos = HEADER.size

    def get() -> str:
        nonlocal pos
        n = data[pos]
        pos += 1 + n
        return data[pos - n : pos].decode()

    model_id, sensor = get(), get()
    nch = data[pos]
    pos += 1
    channels = tuple(get() for _ in range(nch))
    classes = tuple(get() for _ in range(nc))
    pos = HEADER.size + slen
    off = np.frombuffer(data, "<f4", nf, pos).copy()
    scale = np.frombuffer(data, "<f4", nf, pos + 4 * nf).copy()
    body = data[pos + 8 * nf : end]
    return ModelFile(
        model_id, TASKS[task], sensor, channels, window, hop, nf, Scaling(off, scale), kind, body, classes,
        None if math.isnan(thr) else thr, bool(flags & FLAG_SIGNED), hashlib.sha256(content).hexdigest(),
        model_version=flags >> 16, downgrade=bool(flags & FLAG_DOWNGRADE),
    )  # fmt: skip


# ---------------------------------------------------------------- model bodies


def integer_thresholds(estimator):
    """A copy of a tree model whose thresholds are the integers emlearn's int16 code compares against.

    scikit-learn goes left when x <= t (t a midpoint like 12.5); emlearn's C goes left when x < int(t), and
    int() truncates, so for t > 0 a feature equal to floor(t) went the other way (part of the measured 98%).
    On integer features x <= t is x < floor(t) + 1, so we store floor(t) + 1: the same decisions as
    scikit-learn, exactly, in emlearn's comparison. The copy is what emlearn converts and what we write.
    """
    est = copy.deepcopy(estimator)
    for tree in getattr(est, "estimators_", [est]):
        t = tree.tree_
        inner = t.children_left != -1
        th = t.threshold  # a view of the tree's node array: writing it changes the tree
        th[inner] = np.floor(th[inner]) + 1.0
        if not np.all(t.threshold[inner] == np.floor(th[inner])):
            raise RuntimeError("could not rewrite tree thresholds in place")
    return est


def _preorder(nodes: list, root: int) -> list[int]:
    """Decision nodes of one tree in preorder (node, left subtree, right subtree): left child = next node."""
    order, stack = [], [root]
    while stack:
        i = stack.pop()
        order.append(i)
        left, right = nodes[i][2], nodes[i][3]
        if right >= 0:
            stack.append(right)
        if left >= 0:
            stack.append(left)
    return order


def _compact_nodes(nodes: list, roots: list[int]) -> tuple[bytes, list[int]] | None:
    """6-byte preorder nodes (u8 feature, u8 left leaf or 0xFF = next node, i16 threshold, i16 right), or None
    when a left leaf index does not fit a byte. Returns (node bytes, new roots)."""
    out = bytearray()
    new_roots = []
    for root in roots:
        order = _preorder(nodes, root)
        base = len(out) // 6
        where = {old: base + k for k, old in enumerate(order)}
        new_roots.append(base)
        for k, old in enumerate(order):
            feat, value, left, right = nodes[old]
            i = base + k
            if left >= 0:
                if where[left] != i + 1:
                    return None
                left_leaf = 0xFF
            else:
                left_leaf = -left - 1
                if left_leaf >= 0xFF:
                    return None
            r = where[right] - i if right >= 0 else right
            out += struct.pack("<BBhh", int(feat), left_leaf, int(value), r)
    return bytes(out), new_roots


def trees_body(est_int, regress: bool = False, compact: bool = True) -> bytes:
    """Trees from emlearn's own flattening (so node, C core and model.h hold identical trees).

    Node format 1 (compact, 6 bytes a node in preorder) is used when every left leaf index fits a byte; the
    node and the C core expand it to emlearn's 8-byte EmlTreesNode in RAM at load. Node format 0 is emlearn's
    layout as is (8 bytes, the C core points into the file's bytes).
    """
    from emlearn import trees as emt

    leaf_bits = 32 if regress else 0
    leaf = "value" if regress else "argmax"
    forest = emt.flatten_forest(
        [e.tree_ for e in getattr(est_int, "estimators_", [est_int])], leaf=leaf, leaf_bits=leaf_bits
    )
    nodes, roots, leaves = emt.remove_duplicate_leaves(forest)
    if len(nodes) > 32767 or len(leaves) > 32767:
        raise EdgefleetError(
            f"forest too large for int16 node indices ({len(nodes)} nodes)", hint="fewer/smaller trees"
        )
    packed = _compact_nodes(nodes, roots) if compact else None
    node_format = 1 if packed else 0
    out_roots = packed[1] if packed else roots
    out = bytearray(struct.pack("<HHHBB", len(roots), len(nodes), len(leaves), leaf_bits, node_format))
    out += struct.pack(f"<{len(roots)}H", *out_roots)
    out = bytearray(_pad4(bytes(out)))
    if packed:
        out += packed[0]
    else:
        for i, (feat, value, left, right) in enumerate(nodes):
            out += struct.pack(
                "<bBhhh", int(feat), 0, int(value), emt.encode_child(i, left), emt.encode_child(i, right)
            )
    out = bytearray(_pad4(bytes(out)))
    if regress:
        out += struct.pack(f"<{len(leaves)}f", *[float(v) for v in leaves])
    else:
        out += bytes(int(v) for v in leaves)
    return _pad4(bytes(out))


def mlp_body(layers: list[tuple[np.ndarray, np.ndarray, str]]) -> bytes:
    """Dense layers as (weights [n_in, n_out], bias [n_out], activation), float32 (see docs/model-file.md)."""
    out = bytearray(struct.pack("<B3x", len(layers)))
    for w, b, act in layers:
        if act not in ACTIVATIONS:
            raise EdgefleetError(f"activation {act!r} is not supported on the node", hint="use relu/softmax/linear")
        n_in, n_out = w.shape
        out += struct.pack("<HHB3x", n_in, n_out, ACTIVATIONS[act])
        with np.errstate(under="ignore"):  # weights below float32's range become 0, as on the node
            out += np.ascontiguousarray(w.T, dtype="<f4").tobytes() + np.asarray(b, dtype="<f4").tobytes()
    return bytes(out)


def gauss_body(mean: np.ndarray, precision: np.ndarray) -> bytes:
    with np.errstate(under="ignore"):
        return np.asarray(mean, "<f4").tobytes() + np.ascontiguousarray(precision, "<f4").tobytes()
