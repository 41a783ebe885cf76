# Decision stage: window -> model runner -> decision -> event records and an output pin.
#
# The stage listens to one sensor's cleaned readings (the model's r.sensor), keeps the model's channels in
# a preallocated ring of r.window samples, and every r.hop samples hands r.infer() the window oldest first
# (a list of array('f'), one per channel, reused every time). The decision is the class name (classify),
# "anomaly"/"normal" (anomaly, from the runner's own threshold) or "forecast" (regress). An `event` record
# (kind class/anomaly/forecast, label, score, model id, action) goes to the sink only when the decision
# or the rule's output changes, never once per window. The config's `rule` drives an output:
#   {"output": "relay", "on_class": "running"}   on while the decision is that class
#   {"output": "led", "on_anomaly_over": 0.8}    on while the score is over 0.8
# and the event that switches it says so in `action` ("relay:on" / "relay:off").
# Forecast models predict the change of their first channel from its last value (host: edgefleet.forecast.node),
# so the forecast of the next sample is last + score; the model file's threshold is the half-width of the
# prediction interval. When the next sample arrives and its residual (actual - forecast) is outside
# +-threshold, an `anomaly` event (label "forecast", score = the residual) goes to the sink, once per
# excursion: the next one only after a residual back inside the interval.
#
#   d, err = setup(cfg, hw, sink, sampler)   # (None, None): no model configured, stage off
#   d = Decision(hw, cfg, sink, sampler)     # the same for the app: raises DecisionError(message)
# No model in the config: the stage is off. node.model is imported only when a model is configured, so a
# node without the runner (or without a model) does not pay for it.
from array import array


class DecisionError(Exception):
    pass


class Stage:
    def __init__(self, runner, rule, outputs, sink, sensor_channels):
        r = runner
        self.r = r
        self.sink = sink
        self.w = int(r.window)
        self.hop = max(1, int(r.hop))
        if self.w < 1:
            raise DecisionError("model window must be >= 1 sample")
        idx = []
        for c in r.channels:
            if c not in sensor_channels:
                raise DecisionError(
                    "model %s needs channel %s, sensor %s has %s" % (r.model_id, c, r.sensor, ", ".join(sensor_channels))
                )
            idx.append(sensor_channels.index(c))
        self.idx = tuple(idx)
        self.ring = [array("f", [0.0] * self.w) for _ in idx]
        self.win = [array("f", [0.0] * self.w) for _ in idx]
        self.pos = 0
        self.count = 0
        self.since = 0
        self.kind = {"classify": "class", "anomaly": "anomaly", "regress": "forecast"}.get(r.task)
        if self.kind is None:
            raise DecisionError("model task %r is not classify, anomaly or regress" % (r.task,))
        self.out = None
        self.out_name = None
        self.on_class = None
        self.over = None
        if rule:
            name = rule.get("output")
            if name not in outputs:
                raise DecisionError("rule.output: no output %r on this board" % (name,))
            self.out = outputs[name]
            self.out_name = name
            if "on_class" in rule:
                if r.task != "classify" or rule["on_class"] not in r.classes:
                    raise DecisionError(
                        "rule.on_class: %r is not a class of model %s (%s)"
                        % (rule["on_class"], r.model_id, ", ".join(r.classes))
                    )
                self.on_class = rule["on_class"]
            else:
                self.over = float(rule["on_anomaly_over"])
        self.label = None
        self.level = None
        self.score = 0.0
        self.inferences = 0
        self.events = 0
        band = r.threshold if self.kind == "forecast" else None
        self.band = float(band) if band is not None and band == band and band > 0 else None
        self.pending = None  # forecast of the next sample of channel idx[0], or None
        self.outside = False

    def feed(self, ts, flags, values):
        # Called by the sampler with every cleaned reading of the model's sensor.
        if self.pending is not None:
            self._residual(ts, flags, values[self.idx[0]])
        p = self.pos
        ring = self.ring
        for j, i in enumerate(self.idx):
            ring[j][p] = values[i]
        p += 1
        self.pos = 0 if p == self.w else p
        if self.count < self.w:
            self.count += 1
        self.since += 1
        if self.count == self.w and self.since >= self.hop:
            self.since = 0
            self._decide(ts, flags)

    def _decide(self, ts, flags):
        w = self.w
        start = self.pos  # the oldest sample sits where the next one will be written
        for j in range(len(self.idx)):
            src = self.ring[j]
            dst = self.win[j]
            k = 0
            for i in range(start, w):
                dst[k] = src[i]
                k += 1
            for i in range(start):
                dst[k] = src[i]
                k += 1
        index, score = self.r.infer(self.win)
        self.inferences += 1
        self.score = score
        r = self.r
        if self.kind == "class":
            label = r.classes[index] if 0 <= index < len(r.classes) else "class-%d" % index
        elif self.kind == "anomaly":
            label = "anomaly" if index else "normal"
        else:
            label = "forecast"
            if self.band is not None:
                self.pending = self.win[0][w - 1] + score
        level = self.level
        if self.out is not None:
            if self.on_class is not None:
                level = 1 if label == self.on_class else 0
            else:
                level = 1 if score > self.over else 0
        action = None
        if level != self.level:
            self.out.value(level)
            action = self.out_name + (":on" if level else ":off")
            self.level = level
        if label != self.label or action is not None:
            self.label = label
            self.events += 1
            self.sink.event(ts, flags, self.kind, label, score, r.model_id, action, r.sensor)

    def _residual(self, ts, flags, actual):
        res = actual - self.pending
        self.pending = None
        out = res > self.band or res < -self.band
        if out and not self.outside:
            self.events += 1
            self.sink.event(ts, flags, "anomaly", "forecast", res, self.r.model_id, None, self.r.sensor)
        self.outside = out


def attach(runner, cfg, hw, sink, sampler):
    # Wire a loaded runner into the sampler. Returns (Decision, None) or (None, error message).
    sensor = hw.sensor(runner.sensor)
    if sensor is None:
        return None, "model %s reads sensor %s, not on this board" % (runner.model_id, runner.sensor)
    try:
        d = Stage(runner, cfg.get("rule"), hw.outputs, sink, sensor.channels)
    except DecisionError as e:
        return None, str(e)
    if not sampler.listen(runner.sensor, d.feed):
        return None, "model %s reads sensor %s, whose rate is 0 (not sampled)" % (runner.model_id, runner.sensor)
    return d, None


def load_runner(cfg, model_dir=""):
    # (runner, None); (None, None) when no model is configured; (None, error) when it cannot be used. The app
    # calls this early in boot, while the heap is least fragmented: loading needs the loader's code in one
    # piece (node.modelload, released afterwards).
    name = cfg.get("model")
    if not name:
        return None, None
    try:
        from node import model
    except ImportError:
        return None, "model runner (node.model) is not installed on this node"
    path = model_dir + "/" + name if model_dir else name
    try:
        return model.load(path, cfg.get("model_key")), None  # with a key, only models signed with it
    except Exception as e:  # noqa: BLE001 - ModelError, and OSError for a missing file: both a clear error
        return None, "model %s: %s" % (path, e)


def setup(cfg, hw, sink, sampler, model_dir="", runner=None):
    # The stage from the config: (None, None) when no model is configured (stage off), (Decision, None)
    # when running, (None, error) when the model cannot be used (the app then runs in safe mode).
    # runner: one already loaded by load_runner(cfg).
    if runner is None:
        runner, err = load_runner(cfg, model_dir)
        if runner is None:
            return None, err
    return attach(runner, cfg, hw, sink, sampler)


class Decision:
    # The app's handle on the stage: built from the config, raises DecisionError with a clear message when
    # the model cannot be used. The stage runs inside the sampler's task (it is a listener), so run() only
    # keeps the app's task list uniform.
    def __init__(self, hw, cfg, sink, sampler, model_dir="", runner=None):
        stage, err = setup(cfg, hw, sink, sampler, model_dir, runner)
        if err:
            raise DecisionError(err)
        self.stage = stage
        self.model_id = stage.r.model_id if stage else None

    async def run(self):
        return None
