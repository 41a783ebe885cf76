# The node's model runner: loads the model file (contract 3, host/edgefleet/model/modelfile.py, docs/model-file.md)
# and runs it on a window. Uses our emlearn-based C module (`efm`, firmware/cmodule) when the firmware has it,
# else the MicroPython implementation below, which evaluates the same bytes the same way.
#
# RAM is bounded: the file is verified in 256-byte chunks (sha256, optional HMAC), then each section is read
# with readinto into one preallocated array (compact tree nodes are evaluated in place, 6 bytes each); the
# model body may not exceed MAX_BODY bytes, so a loaded model costs at most ~MAX_BODY + 16 bytes per feature
# of heap whatever file it is given.
#
# The loader (header checks, hashing, reading the arrays: about half of this code) lives in node/modelload.py,
# imported by load() and released after it: a node loads its model once, at boot. Imports go one way:
# node.model -> node.modelload. load() hands the loader the Runner class to fill and the C model class (or
# None), and turns the loader's LoadError into ModelError.
import micropython
from micropython import const

from node import features

try:
    import efm as _cmod  # our C module (firmware/cmodule), linked into the firmware or as a native .mpy
except ImportError:
    _cmod = None


class _CModel:
    # The C core holding pointers into `blob` (kept alive here), its state in a bytearray we own.
    def __init__(self, blob):
        self.blob = blob
        self.state = bytearray(_cmod.state_size())
        self.work = bytearray(_cmod.work_size(blob))
        _cmod.load(self.state, blob, self.work)

    def predict(self, q, out):
        return _cmod.predict(self.state, q, out)


_KIND_TREES = const(1)
_KIND_MLP = const(2)
_QMAX = const(32767)


class ModelError(Exception):
    pass


@micropython.viper
def _tree_leaves(nodes: ptr16, roots: ptr16, n_trees: int, q: ptr16, out: ptr16):
    # emlearn's eml_trees_predict_tree: go left when feature < threshold (int16, compared with the sign bit
    # flipped so unsigned compares order like signed ones); child >= 0 is a relative jump, < 0 a leaf.
    for t in range(n_trees):
        i = int(roots[t])
        while True:
            b = i << 2
            f = int(nodes[b]) & 0xFF
            if (int(q[f]) ^ 0x8000) < (int(nodes[b + 1]) ^ 0x8000):
                c = int(nodes[b + 2])
            else:
                c = int(nodes[b + 3])
            if c & 0x8000:
                out[t] = 0xFFFF - c  # leaf = -child - 1
                break
            i += c


@micropython.viper
def _vote(leafidx: ptr16, n_trees: int, leaves: ptr8, votes: ptr16, n_classes: int) -> int:
    # Hard vote over the leaves _tree_leaves reached (expanded nodes, the format of trees too large for the
    # compact 6-byte nodes); the compact path votes inside its walk (_tree_vote6).
    for c in range(n_classes):
        votes[c] = 0
    for t in range(n_trees):
        cls = int(leaves[int(leafidx[t])])
        votes[cls] = int(votes[cls]) + 1
    best = -1
    most = 0
    for c in range(n_classes):
        if int(votes[c]) > most:
            most = int(votes[c])
            best = c
    return best


@micropython.viper
def _tree_vote6(nodes: ptr8, roots: ptr16, n_trees: int, q: ptr16, leaves: ptr8, votes: ptr16, n_classes: int) -> int:
    # _tree_vote on compact nodes, in place: 6 bytes each (u8 feature, u8 left leaf or 0xFF = next node,
    # i16 threshold, i16 right); same decisions as emlearn's expanded nodes.
    for c in range(n_classes):
        votes[c] = 0
    for t in range(n_trees):
        i = int(roots[t])
        while True:
            b = i * 6
            f = int(nodes[b])
            thr = int(nodes[b + 2]) | (int(nodes[b + 3]) << 8)
            if (int(q[f]) ^ 0x8000) < (thr ^ 0x8000):
                ll = int(nodes[b + 1])
                if ll == 0xFF:
                    i += 1
                    continue
                leaf = ll
                break
            c = int(nodes[b + 4]) | (int(nodes[b + 5]) << 8)
            if c & 0x8000:
                leaf = 0xFFFF - c
                break
            i += c
        cls = int(leaves[leaf])
        votes[cls] = int(votes[cls]) + 1
    best = -1
    most = 0
    for c in range(n_classes):
        if int(votes[c]) > most:
            most = int(votes[c])
            best = c
    return best


@micropython.viper
def _tree_leaves6(nodes: ptr8, roots: ptr16, n_trees: int, q: ptr16, out: ptr16):
    # _tree_leaves on compact nodes: the leaf index each tree reaches.
    for t in range(n_trees):
        i = int(roots[t])
        while True:
            b = i * 6
            f = int(nodes[b])
            thr = int(nodes[b + 2]) | (int(nodes[b + 3]) << 8)
            if (int(q[f]) ^ 0x8000) < (thr ^ 0x8000):
                ll = int(nodes[b + 1])
                if ll == 0xFF:
                    i += 1
                    continue
                out[t] = ll
                break
            c = int(nodes[b + 4]) | (int(nodes[b + 5]) << 8)
            if c & 0x8000:
                out[t] = 0xFFFF - c
                break
            i += c

class Runner:
    def __init__(self):
        self.model_id = ""
        self.task = "classify"
        self.classes = ()
        self.sensor = ""
        self.channels = ()
        self.window = 0
        self.hop = 0
        self.threshold = None
        self.sha256 = ""  # hex sha256 of the file's content, for status reports
        self.backend = "micropython"

    def _features(self, window):
        if len(window) != len(self.channels) or len(window[0]) != self.window:
            raise ValueError(
                "window is %d x %d, model wants %d channels x %d" % (len(window), len(window[0]), len(self.channels), self.window)
            )
        features.compute(window, self._feat)
        return self.quantize(self._feat)

    def quantize(self, x):
        # int16 features from float features x (array('f')), with the file's scaling; same rule as the host.
        off = self._off
        sc = self._scale
        q = self._q
        for i in range(self.n_features):
            v = (x[i] - off[i]) * sc[i] + 0.5
            if v >= _QMAX:
                q[i] = _QMAX
            elif v <= -_QMAX:
                q[i] = -_QMAX
            elif v == v:
                iv = int(v)
                if iv > v:  # floor for negatives
                    iv -= 1
                q[i] = iv
            else:  # NaN (a sensor gap): the centre of the training range, as on the host
                q[i] = 0
        return q

    def quantized(self, window):
        # The int16 features of a window (for parity checks against the C code).
        return self._features(window)

    def infer(self, window):
        return self.infer_q(self._features(window))

    def infer_q(self, q):
        if self._c is not None:
            idx = self._c.predict(q, self._out)
            return self._result(idx)
        k = self._kind
        if k == _KIND_TREES and not self._regress:
            if self._fmt:
                best = _tree_vote6(self._nodes, self._roots, self._n_trees, q, self._leaves, self._votes, len(self._out))
            else:
                _tree_leaves(self._nodes, self._roots, self._n_trees, q, self._leafidx)
                best = _vote(self._leafidx, self._n_trees, self._leaves, self._votes, len(self._out))
            return best, self._votes[best] / self._n_trees
        if k == _KIND_TREES:  # regression: mean of the trees' leaf values
            (_tree_leaves6 if self._fmt else _tree_leaves)(self._nodes, self._roots, self._n_trees, q, self._leafidx)
            s = 0.0
            for t in range(self._n_trees):
                s += self._leaves[self._leafidx[t]]
            self._out[0] = s / self._n_trees
            return 0, self._out[0]
        if k == _KIND_MLP:
            return self._result(self._mlp(q))
        return self._result(self._gauss(q))

    def _result(self, idx):
        if self.task == "classify":
            return idx, self._out[idx] if idx >= 0 else 0.0
        if self.task == "regress":
            return 0, self._out[0]
        score = self._out[0]
        return (1 if score > self.threshold else 0), score

    def _mlp(self, q):
        a = self._act_a
        for i in range(self.n_features):
            a[i] = q[i] / 32768.0
        b = self._act_b
        for n_in, n_out, act, w, bias in self._layers:
            for o in range(n_out):
                s = bias[o]
                base = o * n_in
                for i in range(n_in):
                    s += w[base + i] * a[i]
                if act == 1 and s < 0.0:
                    s = 0.0
                elif act == 3:
                    s = 1.0 / (1.0 + _exp(-s))
                elif act == 4:
                    e = _exp(2.0 * s)
                    s = (e - 1.0) / (e + 1.0)
                b[o] = s
            if act == 2:
                m = b[0]
                for o in range(n_out):
                    if b[o] > m:
                        m = b[o]
                t = 0.0
                for o in range(n_out):
                    b[o] = _exp(b[o] - m)
                    t += b[o]
                for o in range(n_out):
                    b[o] = b[o] / t
            a, b = b, a
        out = self._out
        best = 0
        for o in range(len(out)):
            out[o] = a[o]
            if a[o] > a[best]:
                best = o
        return best

    def _gauss(self, q):
        n = self.n_features
        d = self._act_a
        for i in range(n):
            d[i] = q[i] / 32768.0 - self._mean[i]
        p = self._prec
        s = 0.0
        for i in range(n):
            r = 0.0
            base = i * n
            for j in range(n):
                r += p[base + j] * d[j]
            s += r * d[i]
        self._out[0] = s
        return 0


def _exp(x):
    import math

    return math.exp(x)

def load(path, key=None, use_c=True):
    # Load and verify a model file. Raises ModelError with a message saying what is wrong.
    # key: bytes of the HMAC key when the node has one configured (then unsigned files are refused).
    # use_c=False forces the MicroPython implementation even when the C module is present.
    import sys

    import node
    from node import modelload

    try:
        return modelload.load(path, key, Runner, _CModel if use_c and _cmod is not None else None)
    except modelload.LoadError as e:
        raise ModelError(str(e))
    finally:
        sys.modules.pop("node.modelload", None)
        if getattr(node, "modelload", None) is not None:
            del node.modelload
