"""Functions the daemon's black-box tests run, cloudpickled by value (they live in __main__).

    python3 fns.py NAME [ARG]   writes cloudpickle.dumps(function) to stdout
"""

import json
import os
import signal
import sys
import time

import cloudpickle


def double(x):
    return x * 2


def fail_on_7(x):
    if x == 7:
        raise ValueError("bad value %d" % x)
    return x * 2


def exit_on_5(x):
    if x == 5:
        os._exit(3)
    return x * 2


def oom_on_3(x):
    if x == 3:
        hog = bytearray(2 << 30)
        return len(hog)
    return x * 2


def sleep_on_2(x):
    if x == 2:
        time.sleep(60)
    return x * 2


def getpid(x):
    return os.getpid()


def sleep_then_double(x):
    time.sleep(0.3)
    return x * 2


def printer(x):
    print("hello from", x)
    return x


def limits(x):
    with open("/proc/self/cgroup") as handle:
        cgroup = handle.read()
    memory = ""
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if parts[1] == "memory":
            try:
                with open("/sys/fs/cgroup/memory%s/memory.limit_in_bytes" % parts[2]) as handle:
                    memory = handle.read().strip()
            except OSError:
                pass
    return json.dumps({"affinity": sorted(os.sched_getaffinity(0)), "cgroup": cgroup,
                       "memory_limit": memory, "nice": os.nice(0), "pid": os.getpid()})


def container_limits(x):
    """Limits as seen from inside a container (its cgroups are mounted at the root)."""
    def read(path):
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError:
            return ""
    return json.dumps({"affinity": sorted(os.sched_getaffinity(0)),
                       "cpuset": read("/sys/fs/cgroup/cpuset/cpuset.cpus"),
                       "memory_limit": read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                       "memsw_limit": read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
                       "pid": os.getpid(), "uid": os.getuid()})


def make(name, arg):
    if name == "flaky_4":
        marker = arg

        def flaky_4(x):
            if x == 4 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return x * 2
        return flaky_4
    if name == "pid_then_sleep":
        directory = arg

        def pid_then_sleep(x):
            with open(os.path.join(directory, "%d.pid" % x), "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(60)
            return x
        return pid_then_sleep
    if name == "module_version":
        module_name = arg

        def module_version(x):
            try:
                module = __import__(module_name)
            except ImportError:
                return "missing"
            return getattr(module, "__version__", "present")
        return module_version
    if name == "read_file":
        path = arg

        def read_file(x):
            with open(path) as handle:
                return handle.read()
        return read_file
    return globals()[name]


if __name__ == "__main__":
    function = make(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    sys.stdout.buffer.write(cloudpickle.dumps(function))
