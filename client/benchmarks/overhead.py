"""Per-call overhead of the fleetmap client.

    python client/benchmarks/overhead.py [--calls N] [--no-cluster]

1. client-side CPU work of a one-input call (validation, spec, pickling the function, the
   first body, decoding a RESULTS + END answer) with no network at all;
2. with a cluster (``FLEETMAP_COORDINATOR`` or the local one, started if needed): the median
   and p99 of a warm ``remote_parallel_map(f, [1])`` and the time of one 1,000-input call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
import uuid
from array import array
import pickle


def client_side_us(repeat: int = 20000) -> float:
    """Microseconds of client CPU per one-input call, network excluded."""
    from fleetmap import frames, pickling, validate
    from fleetmap.inputs import InputSource
    from fleetmap.job import Job
    from fleetmap.progress import Progress
    from fleetmap.transport import Endpoint

    endpoint = Endpoint("http://127.0.0.1:1")
    answer = frames.encode_items(frames.RESULTS, array("Q", [0]), [pickle.dumps(1, 5)]) + frames.encode_json(
        frames.END, {"state": "completed", "done": 1, "failed": 0}
    )

    def fn(x):
        return x

    def one_call() -> None:
        validate.check_function(fn)
        expected = validate.check_inputs([1])
        job_id = uuid.uuid4().hex
        spec = validate.build_spec(
            job_id, func_cpu=1, func_ram=1, func_gpu=None, parallelism=-1, expected_inputs=expected,
            timeout=None, retries=0, environment=validate.check_environment(None, None), detach=False,
        )
        job = Job(endpoint, spec, pickling.dumps_function(fn), InputSource([1]), Progress(False, 1, job_id))
        job.take_first_batch()
        job._first_body()
        for kind, body in frames.iter_frames(answer):
            if kind == frames.RESULTS:
                _, payloads = frames.decode_items(body)
                [pickling.loads(p) for p in payloads]
            else:
                frames.decode_json_bytes(body, "END")

    return min(timeit.repeat(one_call, number=repeat, repeat=3)) / repeat * 1e6


def cluster_figures(calls: int) -> dict:
    """Warm single-input latency and a 1,000-input call against a real cluster."""
    from fleetmap import remote_parallel_map

    def fn(x):
        return x

    start = time.perf_counter()
    remote_parallel_map(fn, [1])
    first = time.perf_counter() - start
    for _ in range(50):
        remote_parallel_map(fn, [1])
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        remote_parallel_map(fn, [1])
        samples.append(time.perf_counter() - t0)
    samples.sort()
    t0 = time.perf_counter()
    remote_parallel_map(fn, range(1000))
    thousand = time.perf_counter() - t0
    return {
        "first_call_ms": first * 1e3,
        "warm_median_ms": statistics.median(samples) * 1e3,
        "warm_p99_ms": samples[int(len(samples) * 0.99) - 1] * 1e3,
        "thousand_inputs_ms": thousand * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--no-cluster", action="store_true", help="only the network-free client figure")
    args = parser.parse_args()
    print(f"client-side CPU per one-input call: {client_side_us():.1f} us")
    if not args.no_cluster:
        for name, value in cluster_figures(args.calls).items():
            print(f"{name}: {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
