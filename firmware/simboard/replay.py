# Replay of a recorded CSV for the sim board's scenario (simboard.scenario): header `t_s,<channel>...,label`,
# one row per sample; `label` (optional) is the ground-truth segment name, exposed by label_at(). Imported by
# simboard.scenario (only when a scenario replays), which passes its ScenarioError in: no import back.


class Replay:
    # Streams the CSV: keeps the file open and reads forward as time advances, so a long recording costs
    # one line of heap, not the whole file. Labels are kept as (start_s, label) segments for label_at().
    def __init__(self, spec, channels, error):
        # error: the exception class to raise for a replay that cannot be used (the scenario's ScenarioError).
        self.path = spec["file"]
        self.rate = float(spec.get("rate_hz", 10))
        self.loop = bool(spec.get("loop", True))
        try:
            self.f = open(self.path)
        except OSError:
            raise error("replay file not found: " + self.path)
        head = self.f.readline().strip().split(",")
        self.has_t = head[0] == "t_s"
        cols = head[1:] if self.has_t else head
        self.label_col = cols.index("label") if "label" in cols else -1
        self.map = []  # (csv column, sensor channel index)
        for i, c in enumerate(cols):
            if c in channels:
                self.map.append((i, channels.index(c)))
        self.segments = []
        n = 0
        t = 0.0
        last = None
        for line in self.f:
            parts = line.strip().split(",")
            if len(parts) < len(cols):
                continue
            t = self._t(parts, n)
            lab = parts[len(parts) - len(cols) + self.label_col] if self.label_col >= 0 else ""
            if lab != last:
                self.segments.append((t, lab))
                last = lab
            n += 1
        if n == 0:
            raise error("replay file has no rows: " + self.path)
        self.duration = t + 1.0 / self.rate
        self.rows = n
        self._rewind()

    def _t(self, parts, n):
        return float(parts[0]) if self.has_t else n / self.rate

    def _rewind(self):
        self.f.seek(0)
        self.f.readline()
        self.n = 0
        self.cur = None
        self.nxt = self._next()
        self.base = 0.0

    def _next(self):
        line = self.f.readline()
        if not line:
            return None
        parts = line.strip().split(",")
        off = 1 if self.has_t else 0
        return (self._t(parts, self.n), [float(parts[off + i]) if parts[off + i] else None for i, _ in self.map])

    def values(self, out, t):
        # channels the replay does not give keep the generator values already in out
        if self.loop and t - self.base >= self.duration:
            k = int((t - self.base) / self.duration)
            self.base += k * self.duration
            self._rewind_keep_base()
        rel = t - self.base
        while self.nxt is not None and self.nxt[0] <= rel:
            self.cur = self.nxt
            self.n += 1
            self.nxt = self._next()
        row = self.cur or self.nxt
        if row is not None:
            vals = row[1]
            for j, (_, ch) in enumerate(self.map):
                if vals[j] is not None:
                    out[ch] = vals[j]

    def _rewind_keep_base(self):
        base = self.base
        self._rewind()
        self.base = base

    def label_at(self, t):
        if self.loop:
            t = t % self.duration
        lab = ""
        for start, name in self.segments:
            if start > t:
                break
            lab = name
        return lab
