# The node's side of contracts 1 and 3: features equal the host's, the runner loads the model file within the
# ESP32-DevKitC heap and predicts what the trained model predicts, and a bad model file is a ModelError.
import gc
from array import array

from node import features, model


def _window(channels, samples):
    return [array("f", bytes(4 * samples)) for _ in range(channels)]


def test_features_match_host(feature_cases):
    tol = feature_cases["tol"]
    nch, ns = feature_cases["channels"], feature_cases["samples"]
    w = _window(nch, ns)
    nf = features.count(nch)
    out = array("f", bytes(4 * nf))
    exp = array("d", bytes(8 * nf))
    scales = array("d", bytes(8 * nf))
    worst = 0.0
    f = open(feature_cases["path"], "rb")
    for _ in range(feature_cases["n"]):
        for ch in w:
            f.readinto(ch)
        f.readinto(exp)
        f.readinto(scales)
        features.compute(w, out)
        for i in range(nf):
            err = abs(out[i] - exp[i]) / scales[i]
            worst = max(worst, err)
            assert err <= tol, (i, out[i], exp[i], err)
    f.close()
    print("node vs host features: worst error %.2e of channel scale (tolerance %.0e)" % (worst, tol))


def test_features_fill_callers_array():
    # compute() writes into the caller's preallocated array and refuses one that is too small
    w = _window(2, 20)
    for i in range(20):
        w[0][i] = i
        w[1][i] = 1.0
    out = array("f", bytes(4 * features.count(2)))
    assert features.compute(w, out) is out
    assert out[0] == 9.5 and out[2] == 0.0 and out[3] == 19.0 and out[5] == 19.0, out  # mean, min, max, ptp
    assert abs(out[7] - 1.0) < 1e-6, out[7]  # slope of 0..19
    assert out[features.N_PER_CHANNEL + 1] == 0.0  # std of a constant
    try:
        features.compute(w, array("f", bytes(4)))
    except ValueError:
        pass
    else:
        raise AssertionError("a too small output array must raise")


def test_runner_predicts_like_trained_model(shipped_model_case):
    gc.collect()
    before = gc.mem_free()
    r = model.load(shipped_model_case["path"], use_c=False)
    assert r.task == "classify" and r.sensor == "imu", (r.task, r.sensor)
    assert r.channels == ("ax", "ay", "az", "gx", "gy", "gz"), r.channels
    assert list(r.classes) == shipped_model_case["classes"], r.classes
    assert r.window == 50 and r.hop == 25, (r.window, r.hop)
    w = _window(len(r.channels), r.window)
    f = open(shipped_model_case["windows"], "rb")
    for exp in shipped_model_case["expected"]:
        for ch in w:
            f.readinto(ch)
        idx, score = r.infer(w)
        assert idx == exp, (idx, exp)
        assert 0.0 < score <= 1.0, score
    f.close()
    gc.collect()
    print("model + 24 inferences held %d bytes of heap" % (before - gc.mem_free()))


def test_quantize_edges(shipped_model_case):
    # a sensor gap (NaN) maps to the centre of the training range, infinities clamp: never an exception
    r = model.load(shipped_model_case["path"], use_c=False)
    assert len(r.sha256) == 64, r.sha256
    x = array("f", bytes(4 * r.n_features))
    for i in range(r.n_features):
        x[i] = r._off[i]
    x[0] = float("nan")
    x[1] = float("inf")
    x[2] = -float("inf")
    x[3] = 1e30
    q = r.quantize(x)
    assert q[0] == 0 and q[1] == 32767 and q[2] == -32767 and q[3] == 32767, q
    assert q[4] == 0 and q[5] == 0, q  # at the offset: the middle of the training range
    try:
        r.infer([array("f", bytes(4 * 10)) for _ in range(6)])
    except ValueError as e:
        assert "model wants 6 channels x 50" in str(e), e
    else:
        raise AssertionError("a window of the wrong length must raise")


def _expect_model_error(path, key=None, words=()):
    try:
        model.load(path, key)
    except model.ModelError as e:
        msg = str(e)
        for w in words:
            assert w in msg, msg
        return msg
    raise AssertionError("expected ModelError for " + path)


def test_bad_model_files_raise_model_error(shipped_model_case, workdir):
    with open(shipped_model_case["path"], "rb") as f:
        good = f.read()
    cases = (
        ("missing", None, ("not found",)),
        ("empty", b"", ("magic",)),
        ("magic", b"XXXX" + good[4:], ("magic",)),
        ("version", good[:4] + b"\x09\x00" + good[6:], ("version",)),
        ("truncated", good[:-10], ("length",)),
        ("flipped", good[:100] + bytes([good[100] ^ 1]) + good[101:], ("sha256",)),
        ("huge", good[:24] + b"\x00\x00\x10\x00" + good[28:], ("too large",)),
    )
    for name, data, words in cases:
        path = workdir + "/" + name + ".efm"
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        print(name, "->", _expect_model_error(path, None, words))


def test_signed_model_verified_with_key(signed_model):
    key = bytes.fromhex(signed_model["key"])
    r = model.load(signed_model["path"], key)
    assert r.model_id == "basicmotions-rf", r.model_id
    model.load(signed_model["path"])  # no key configured: sha256 only
    _expect_model_error(signed_model["path"], b"another key of 32 bytes........!", ("signature",))
    _expect_model_error(signed_model["unsigned"], key, ("not signed",))
