"""Many short jobs of mixed sizes from several client processes at once: every job returns
exactly its inputs' results (nothing lost, nothing doubled), whatever the interleaving of job
starts, INPUTS_END and pool refills on the node."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CLIENT_SCRIPT = textwrap.dedent(
    """
    import random, sys
    from fleetmap import remote_parallel_map

    def double(x):
        return x * 2

    rng = random.Random(int(sys.argv[1]))
    for call in range(int(sys.argv[2])):
        size = rng.choice([1, 1, 2, 3, 10, 100, 1000, 3000])
        ordered = rng.random() < 0.5
        results = remote_parallel_map(double, range(size), ordered=ordered)
        expected = [x * 2 for x in range(size)]
        got = results if ordered else sorted(results)
        if got != expected:
            print(f"call {call}: {size} inputs, ordered={ordered}: {len(results)} results, "
                  f"missing {sorted(set(expected) - set(results))[:5]}", flush=True)
            sys.exit(1)
    print("ok", flush=True)
    """
)


@pytest.mark.deadline(240)
def test_concurrent_clients_get_every_result_exactly_once(cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    env = dict(os.environ)
    clients = [
        subprocess.Popen(
            [sys.executable, str(script), str(seed), "120"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(3)
    ]
    outputs = [client.communicate(timeout=220)[0] for client in clients]
    for seed, (client, output) in enumerate(zip(clients, outputs)):
        assert client.returncode == 0 and output.strip().endswith("ok"), f"client {seed}:\n{output}"
