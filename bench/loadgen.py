"""How many devices one machine holds: thousands of MQTT 3.1.1 connections, each a device publishing the node's
real telemetry (protocol v2: log id, per-device seq, env reading records) at one message per --period seconds,
logging in with its own credentials on the secure broker configuration (mosquitto: password file + the fleet
ACL from broker.render_acl; RabbitMQ: per-device users with the topic permissions of rabbitmq.py), into one or
more `edgefleet collect` processes writing to PostgreSQL.

For N devices one trial measures:
- loss: every (device, log, seq) published must be a row in `readings` (the primary key makes a row unique);
  a device here never republishes, so anything the broker or collector drops shows as loss;
- logged-to-stored latency: from the moment a record is logged and published (its `ts`) to the moment the
  device receives the collector's `stored` ack covering its seq (sent after the COMMIT; this includes the
  ack's way back, which is what a node waits for before freeing flash). A record never acked counts as lost
  for latency (infinite).
A trial passes with zero loss, zero failed connections and p99 < --p99-ms. The search doubles N from --start
until a trial fails (or --max-n), then bisects between the last pass and the first fail.

The devices are edgefleet.sim.loadgen's: our own minimal MQTT 3.1.1 client over asyncio streams, one
coroutine per device in this one process. The generator shares the machine's cores with the broker, the
collector and PostgreSQL; each trial prints the CPU each of them used while publishing.

    PYTHONPATH=host .venv/bin/python bench/loadgen.py --broker mosquitto [--start 500] [--max-n 32000]
    PYTHONPATH=host .venv/bin/python bench/loadgen.py --broker rabbitmq --start 250
    PYTHONPATH=host .venv/bin/python bench/loadgen.py --broker mosquitto --fixed 2000   # one trial
"""

from __future__ import annotations

import argparse
import resource
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"
sys.path.insert(0, str(HOST))

from edgefleet.sim.loadgen import LoadSpec, MosquittoTarget, RabbitTarget, trial  # noqa: E402
from edgefleet.sim.postgres import PostgresCluster  # noqa: E402


def search(target, pg, args, work: Path) -> int:
    """Double N from --start until a trial fails, then bisect; returns the largest N that passed (0: none)."""
    results: dict[int, bool] = {}
    collector_password = secrets.token_urlsafe(16)  # one for the run: RabbitMQ keeps its users between trials
    k = 0

    def run(n: int) -> bool:
        nonlocal k
        k += 1
        spec = LoadSpec(
            args.period,
            args.msgs,
            args.recs,
            args.drain,
            args.collectors,
            args.connect_concurrency,
            args.settle,
            collector_password,
        )
        r = trial(n, target, pg, spec, work, k)
        results[n] = r.ok(args.p99_ms)
        print(("PASS " if results[n] else "FAIL ") + r.line(), flush=True)
        for e in r.errors:
            print(f"      e.g. {e}", flush=True)
        return results[n]

    if args.fixed:
        return args.fixed if run(args.fixed) else 0
    n, good, bad = args.start, 0, 0
    while n <= args.max_n:
        if not run(n):
            bad = n
            break
        good, n = n, n * 2
        if good < args.max_n < n:
            n = args.max_n  # the largest N this machine lets us try (file descriptors), once
    if not bad:
        print(f"every N up to {good} passed (--max-n {args.max_n} reached)")
        return good
    for _ in range(args.bisect):
        if bad - good <= max(1, good // 10):
            break
        mid = (good + bad) // 2
        if run(mid):
            good = mid
        else:
            bad = mid
    return good


def raise_fd_limit(want: int) -> tuple[int, str]:
    """Soft file-descriptor limit up to `want`: past the hard limit too when we may (root: up to
    /proc/sys/fs/nr_open). Returns the limit in force and what capped it, if anything did."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = ""
    if want > hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, cap
        except (ValueError, OSError) as e:
            cap = f"hard limit {hard} (raising it: {e})"
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0], cap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("mosquitto", "rabbitmq"), default="mosquitto")
    ap.add_argument("--start", type=int, default=500, help="first N of the search (default: %(default)s)")
    ap.add_argument("--max-n", type=int, default=32000, help="largest N tried (default: %(default)s)")
    ap.add_argument("--bisect", type=int, default=2, help="bisection steps after the first fail (default: 2)")
    ap.add_argument("--fixed", type=int, default=0, help="run one trial with this N instead of searching")
    ap.add_argument("--period", type=float, default=10.0, help="s between a device's messages (default: 10)")
    ap.add_argument("--msgs", type=int, default=3, help="messages per device per trial (default: 3)")
    ap.add_argument("--recs", type=int, default=5, help="reading records per message (default: 5)")
    ap.add_argument(
        "--drain", type=float, default=5.0, help="s after its last publish a device waits for acks (default: 5)"
    )
    ap.add_argument(
        "--settle", type=float, default=5.0, help="s between the last connect and the first publish (default: 5)"
    )
    ap.add_argument("--collectors", type=int, default=1, help="collector processes (default: 1)")
    ap.add_argument("--connect-concurrency", type=int, default=200, help="connects in flight (default: 200)")
    ap.add_argument("--p99-ms", type=float, default=2000.0, help="latency bound (default: 2000)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # stop the brokers and collectors on the way out
    fds, cap = raise_fd_limit(2 * args.max_n + 1000)
    print(f"file descriptors: {fds}{' (capped by the ' + cap + ')' if cap else ''}; the brokers started from"
          f" here inherit it", flush=True)  # fmt: skip
    args.max_n = min(args.max_n, fds - 200)
    work = Path(tempfile.mkdtemp(prefix="edgefleet-load-"))
    pg = PostgresCluster().start()
    target = MosquittoTarget(work) if args.broker == "mosquitto" else RabbitTarget(work)
    try:
        best = search(target, pg, args, work)
        print(f"\n{args.broker}: largest N with zero loss and p99 < {args.p99_ms:.0f} ms at one message per"
              f" {args.period:g} s: {best}  ({best / args.period:.0f} messages/s)")  # fmt: skip
    finally:
        if isinstance(target, RabbitTarget):
            target.close()
        else:
            target.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
