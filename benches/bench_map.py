"""fleetmap benchmark: remote_parallel_map on a local cluster vs multiprocessing.Pool and
concurrent.futures.ProcessPoolExecutor, side by side on this machine, in one run.

Usage: python3 benches/bench_map.py [--quick] [--json FILE] [--docker | --docker-only]

``--docker`` adds the docker runtime (private local clusters with FLEETMAP_LOCAL_RUNTIME):
trivial-map throughput beside the process runtime, and the first result of a new job whose
Dockerfile image is cached.

Each scenario prints the figure for every contender and fleetmap's ratio to each, plus the
issue's target. This is a benchmark, not a test: it reports, it does not assert.
"""

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

from fleetmap import remote_parallel_map
from fleetmap import local_cluster

WORKERS = 2


def double(x):
    return x * 2


def sleep_10ms(x):
    time.sleep(0.01)
    return x


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def scenario_throughput(n):
    """Trivial x*2 over n inputs with 2 instances: inputs per second."""
    inputs = list(range(n))
    expected = [x * 2 for x in inputs]
    rows = {}
    remote_parallel_map(double, [1], parallelism=WORKERS)  # cluster up, pool warm
    best = None
    for _ in range(3):
        t, out = timed(lambda: remote_parallel_map(double, inputs, parallelism=WORKERS))
        assert out == expected
        best = t if best is None else min(best, t)
    rows["fleetmap"] = n / best
    with mp.Pool(WORKERS) as pool:
        pool.map(double, [1])
        t, out = timed(lambda: pool.map(double, inputs, chunksize=1024))
        assert out == expected
        rows["multiprocessing.Pool(chunksize=1024)"] = n / t
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        list(ex.map(double, [1]))
        t, out = timed(lambda: list(ex.map(double, inputs, chunksize=1024)))
        assert out == expected
        rows["ProcessPoolExecutor(chunksize=1024)"] = n / t
    return {"name": f"x*2 over {n:,} inputs, {WORKERS} instances", "unit": "inputs/s",
            "higher_is_better": True, "rows": rows, "target": ("fleetmap", ">=", 250_000)}


def scenario_warm_latency(calls):
    """Median latency of a warm single-input call."""
    rows = {}
    remote_parallel_map(double, [1])
    samples = []
    for _ in range(calls):
        t, out = timed(lambda: remote_parallel_map(double, [1]))
        assert out == [2]
        samples.append(t)
    rows["fleetmap"] = statistics.median(samples) * 1000
    # The same with a 20 ms pause before each call, as an interactive user makes them: the
    # node has time to refill its warm pool, and paths that stall after idling show up.
    samples = []
    for _ in range(calls // 3):
        time.sleep(0.02)
        t, out = timed(lambda: remote_parallel_map(double, [1]))
        samples.append(t)
    rows["fleetmap, 20 ms between calls"] = statistics.median(samples) * 1000
    with mp.Pool(WORKERS) as pool:
        pool.map(double, [1])
        samples = [timed(lambda: pool.map(double, [1]))[0] for _ in range(calls)]
        rows["multiprocessing.Pool"] = statistics.median(samples) * 1000
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        list(ex.map(double, [1]))
        samples = [timed(lambda: list(ex.map(double, [1])))[0] for _ in range(calls)]
        rows["ProcessPoolExecutor"] = statistics.median(samples) * 1000
    return {"name": "warm map over [1], median", "unit": "ms", "higher_is_better": False,
            "rows": rows, "target": ("fleetmap", "<=", 2.0)}


COLD_SNIPPET = """
import time, sys
t0 = time.perf_counter()
from fleetmap import remote_parallel_map
def double(x):
    return x * 2
assert remote_parallel_map(double, [1]) == [2]
print(time.perf_counter() - t0)
"""

COLD_POOL_SNIPPET = """
import time
t0 = time.perf_counter()
import multiprocessing as mp
def double(x):
    return x * 2
if __name__ == "__main__":
    with mp.Pool(2) as pool:
        assert pool.map(double, [1]) == [2]
    print(time.perf_counter() - t0)
"""


def scenario_cold_start(runs):
    """First call with no cluster running: auto-start included, to the result."""
    rows = {}
    samples = []
    for _ in range(runs):
        local_cluster.down()
        out = subprocess.run([sys.executable, "-c", COLD_SNIPPET], check=True,
                             capture_output=True, text=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    rows["fleetmap (cluster auto-start)"] = statistics.median(samples)
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", COLD_POOL_SNIPPET], check=True,
                             capture_output=True, text=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    rows["multiprocessing.Pool (start + map + stop)"] = statistics.median(samples)
    return {"name": "first call, nothing running, median", "unit": "s",
            "higher_is_better": False, "rows": rows,
            "target": ("fleetmap (cluster auto-start)", "<=", 0.5)}


def scenario_sleep(n, runs=3):
    """n inputs that each sleep 10 ms, 2 instances: total wall time, median of ``runs`` for each
    contender (one run is at the mercy of the timer slack of a single moment). The floor is
    what n/2 sleeps in a row take on this machine, also reported."""
    inputs = list(range(n))
    rows = {}

    def median_of(run):
        samples = []
        for _ in range(runs):
            t, out = timed(run)
            assert list(out) == inputs
            samples.append(t)
        return statistics.median(samples)

    remote_parallel_map(double, [1])
    rows["fleetmap"] = median_of(lambda: remote_parallel_map(sleep_10ms, inputs, parallelism=WORKERS))
    with mp.Pool(WORKERS) as pool:
        pool.map(double, [1])
        rows["multiprocessing.Pool(chunksize=1)"] = median_of(lambda: pool.map(sleep_10ms, inputs, chunksize=1))
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        list(ex.map(double, [1]))
        rows["ProcessPoolExecutor"] = median_of(lambda: list(ex.map(sleep_10ms, inputs)))
    t0 = time.perf_counter()
    for _ in range(n // WORKERS):
        time.sleep(0.01)
    rows["floor: n/2 sleeps in a row, no pool"] = time.perf_counter() - t0
    return {"name": f"{n} inputs sleeping 10 ms, {WORKERS} instances", "unit": "s",
            "higher_is_better": False, "rows": rows, "target": ("fleetmap", "<=", 1.03)}


DOCKER_SNIPPET = r"""
import json, os, statistics, sys, tempfile, time
from fleetmap import remote_parallel_map
n, runs, with_image = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
def double(x):
    return x * 2
inputs = list(range(n))
remote_parallel_map(double, [1], parallelism=2)

def wait_warm(timeout=60.0):
    # Waits until the node's warm pool is full again: each job gets fresh instances and the
    # replacements (forks, or container starts) must not be timed as the next job's work.
    import urllib.request
    from fleetmap import local_cluster
    node = local_cluster.Paths().node_addr.read_text().strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(node + "/v1/node", timeout=5) as answer:
            pool = json.load(answer).get("pool", {})
        if pool.get("idle", 0) >= pool.get("target", 0):
            return
        time.sleep(0.05)

best = None
for _ in range(3):
    wait_warm()
    t0 = time.perf_counter()
    assert remote_parallel_map(double, inputs, parallelism=2) == [x * 2 for x in inputs]
    t = time.perf_counter() - t0
    best = t if best is None else min(best, t)
out = {"throughput": n / best}
if with_image:
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "Dockerfile")
    with open(path, "w") as fh:
        fh.write("FROM fleetmap/base:1\nRUN echo fleetmap-bench > /opt/bench\n")
    t0 = time.perf_counter()
    remote_parallel_map(double, [1], dockerfile=path)  # builds (or finds) the image
    out["first_job_s"] = time.perf_counter() - t0
    samples = []
    for _ in range(runs):
        time.sleep(1.0)  # the environment's warm containers are replaced after each job
        t0 = time.perf_counter()
        first = next(iter(remote_parallel_map(double, [1, 2], dockerfile=path, generator=True)))
        samples.append(time.perf_counter() - t0)
        assert first == 2
    out["first_result_s"] = statistics.median(samples)
print(json.dumps(out))
"""


def _cluster_run(runtime, n, runs):
    """Runs DOCKER_SNIPPET against a private local cluster of ``runtime``; its figures."""
    import tempfile

    home = tempfile.mkdtemp(prefix=f"fleetmap-bench-{runtime}-")
    # Node default environment (FLEETMAP_CLONE=0): a docker node would otherwise build an
    # image of this interpreter's whole clone first.
    env = dict(os.environ, FLEETMAP_HOME=home, FLEETMAP_LOCAL_RUNTIME=runtime, FLEETMAP_CLONE="0")
    env.pop("FLEETMAP_COORDINATOR", None)
    try:
        out = subprocess.run([sys.executable, "-c", DOCKER_SNIPPET, str(n), str(runs),
                              "1" if runtime == "docker" else "0"],
                             env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, "-c", "from fleetmap import local_cluster; local_cluster.down()"],
                       env=env, capture_output=True)


def scenarios_docker(n, runs):
    """The docker runtime beside the process runtime: trivial-map throughput, and the first
    result of a new job whose Dockerfile image is cached (warm containers)."""
    process = _cluster_run("process", n, runs)
    docker = _cluster_run("docker", n, runs)
    throughput = {"name": f"x*2 over {n:,} inputs, 2 instances, docker vs process runtime",
                  "unit": "inputs/s", "higher_is_better": True,
                  "rows": {"fleetmap docker": docker["throughput"],
                           "fleetmap process": process["throughput"]},
                  "target": ("fleetmap docker", ">=", 0.8 * process["throughput"])}
    latency = {"name": "docker: first result of a new job, Dockerfile image cached, median",
               "unit": "s", "higher_is_better": False,
               "rows": {"fleetmap docker (cached image)": docker["first_result_s"],
                        "fleetmap docker (first job: build or find the image)": docker["first_job_s"]},
               "target": ("fleetmap docker (cached image)", "<=", 1.0)}
    return [throughput, latency]


def report(result):
    print(f"\n== {result['name']} ({result['unit']})")
    rows = result["rows"]
    ours_name = result["target"][0]
    ours = rows[ours_name]
    for name, value in rows.items():
        line = f"  {name:<45} {value:>14,.3f}"
        if not name.startswith("fleetmap") and value:
            ratio = ours / value if result["higher_is_better"] else value / ours
            line += f"   fleetmap is {ratio:.2f}x {'as fast' if ratio >= 1 else 'the speed'}"
        print(line)
    name, op, bound = result["target"]
    met = ours >= bound if op == ">=" else ours <= bound
    print(f"  target: {name} {op} {bound:,} -> {'MET' if met else 'NOT MET'} ({ours:,.3f})")
    result["met"] = met


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--docker", action="store_true",
                        help="also compare the docker runtime with the process runtime")
    parser.add_argument("--docker-only", action="store_true", help="only the docker scenarios")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    results = []
    if not args.docker_only:
        results += [
            scenario_throughput(20_000 if args.quick else 100_000),
            scenario_warm_latency(50 if args.quick else 300),
            scenario_sleep(200),
            scenario_cold_start(2 if args.quick else 5),
        ]
    if args.docker or args.docker_only:
        results += scenarios_docker(20_000 if args.quick else 100_000, 5 if args.quick else 10)
    for result in results:
        report(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    mp.set_start_method("fork", force=True)
    main()
