"""fleetmap demo: map a function over inputs on an auto-started local cluster.

Run it with ./scripts/demo (which builds everything first).
"""

import os
import time

from fleetmap import remote_parallel_map


def slow_square(x):
    """Pretend work: 50 ms, then say where it ran."""
    time.sleep(0.05)
    if x % 10 == 0:
        print(f"running on cpus {sorted(os.sched_getaffinity(0))}")
    return x * x


def main():
    t0 = time.perf_counter()
    results = remote_parallel_map(slow_square, range(40), func_cpu=1, func_ram=1)
    t1 = time.perf_counter()
    print(f"squares of 0..39: {results}")
    print(f"40 inputs x 50 ms on the local cluster took {t1 - t0:.2f} s "
          f"(one process would take 2.00 s)")

    t0 = time.perf_counter()
    doubled = remote_parallel_map(lambda x: x * 2, range(100_000))
    t1 = time.perf_counter()
    assert doubled == [x * 2 for x in range(100_000)]
    print(f"100,000 trivial inputs in {t1 - t0:.2f} s "
          f"({100_000 / (t1 - t0):,.0f} inputs/s)")

    class Boom(Exception):
        pass

    def explode(x):
        if x == 3:
            raise Boom(f"input {x} is unlucky")
        return x

    try:
        remote_parallel_map(explode, range(5))
    except Boom as err:
        print(f"remote exception came back as {type(err).__name__}: {err} "
              f"(input {err.fleetmap_index})")


if __name__ == "__main__":
    main()
