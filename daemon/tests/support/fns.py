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


def exits_on_3_and_20_else_sleeps(x):
    if x in (3, 20):
        os._exit(3)
    time.sleep(0.02)
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


def sleep_then_host(x):
    """x and the host (a container's id under Docker) that ran it, as "x@host"."""
    import socket
    time.sleep(0.3)
    return "%d@%s" % (x, socket.gethostname())


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


def gpu_env(x):
    """The GPU this instance sees, and when it ran (for exclusivity checks across instances)."""
    start = time.time()
    time.sleep(0.2)
    return json.dumps({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                       "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                       "pid": os.getpid(), "start": start, "end": time.time()})


def cuda_view(x):
    """What CUDA itself sees from inside the instance (through libcuda, no Python packages):
    the number of devices and their UUIDs, plus ``nvidia-smi -L`` (NVML's view, which ignores
    CUDA_VISIBLE_DEVICES) for the record."""
    import ctypes
    import subprocess
    view = {"env": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": None, "uuids": [], "error": None}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        status = cuda.cuInit(0)
        if status != 0:
            raise RuntimeError("cuInit returned %d" % status)
        count = ctypes.c_int()
        cuda.cuDeviceGetCount(ctypes.byref(count))
        view["count"] = count.value
        for ordinal in range(count.value):
            device = ctypes.c_int()
            cuda.cuDeviceGet(ctypes.byref(device), ordinal)
            raw = (ctypes.c_ubyte * 16)()
            cuda.cuDeviceGetUuid(raw, device)
            h = bytes(raw).hex()
            view["uuids"].append("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
    except Exception as exc:  # reported to the test, which fails with it
        view["error"] = "%s: %s" % (type(exc).__name__, exc)
    try:
        view["smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        view["smi"] = "nvidia-smi failed: %s" % exc
    return json.dumps(view)


def make(name, arg):
    if name == "open_devices":
        directory = arg

        def open_devices(x):
            """errno (0 when it opened) of opening each device node in ``directory``."""
            import errno as errno_names
            seen = {}
            for entry in sorted(os.listdir(directory)):
                try:
                    os.close(os.open(os.path.join(directory, entry), os.O_RDWR))
                    seen[entry] = "ok"
                except OSError as exc:
                    seen[entry] = errno_names.errorcode.get(exc.errno, str(exc.errno))
            seen["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            return json.dumps(seen)
        return open_devices
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
