"""Argument validation: one sentence per refusal, raised before the coordinator is contacted
or any input is consumed; and the JobSpec the accepted arguments become."""

from __future__ import annotations

import pytest

from fleetmap import InvalidArgument, remote_parallel_map, validate


@pytest.fixture
def no_coordinator(monkeypatch, tmp_path):
    """An address nothing listens on and an empty home: any network use would fail loudly."""
    monkeypatch.setenv("FLEETMAP_COORDINATOR", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEETMAP_HOME", str(tmp_path))


def _untouched():
    consumed = []

    def gen():
        consumed.append(True)
        yield 1

    return gen(), consumed


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"func_cpu": 0}, r"^func_cpu must be a whole number of CPUs from 1 to 96, got 0\.$"),
        ({"func_cpu": 97}, r"func_cpu must be .* got 97"),
        ({"func_cpu": 1.5}, r"func_cpu must be .* got 1\.5"),
        ({"func_cpu": True}, r"func_cpu must be .* got True"),
        ({"func_cpu": "2"}, r"func_cpu must be .* got '2'"),
        ({"func_ram": 0}, r"^func_ram must be a whole number of GB from 1 to 360, got 0\.$"),
        ({"func_ram": 361}, r"func_ram must be .* got 361"),
        ({"parallelism": 0}, r"^parallelism must be -1 \(as many instances as fit\) or a whole number >= 1, got 0\.$"),
        ({"parallelism": -2}, r"parallelism must be .* got -2"),
        ({"func_gpu": ""}, r"func_gpu must be a GPU model name"),
        ({"func_gpu": 1}, r"func_gpu must be a GPU model name"),
        ({"retries": -1}, r"^retries must be a whole number >= 0, got -1\.$"),
        ({"timeout": 0}, r"timeout must be a number of seconds > 0"),
        ({"timeout": "5"}, r"timeout must be a number of seconds > 0"),
        ({"packages": "numpy"}, r"packages must be a list of pip requirements"),
        ({"packages": ["numpy", ""]}, r"packages must hold non-empty requirement strings"),
        ({"dockerfile": "/nonexistent/Dockerfile"}, r"dockerfile '/nonexistent/Dockerfile' cannot be read"),
        ({"api_key": ""}, r"api_key must be a non-empty string"),
        ({"generator": True, "detach": True}, r"cannot be combined with generator=True"),
    ],
)
def test_bad_argument_is_one_sentence_and_consumes_nothing(no_coordinator, kwargs, pattern):
    inputs, consumed = _untouched()
    with pytest.raises(InvalidArgument, match=pattern) as info:
        remote_parallel_map(abs, inputs, **kwargs)
    assert "\n" not in str(info.value)
    assert not consumed


def test_function_and_inputs_checked(no_coordinator):
    with pytest.raises(InvalidArgument, match="^function_ must be a callable taking one input, got int"):
        remote_parallel_map(3, [1])
    with pytest.raises(InvalidArgument, match="inputs must be an iterable such as a list or a generator, got int"):
        remote_parallel_map(abs, 5)
    with pytest.raises(InvalidArgument, match="wrap it in a list"):
        remote_parallel_map(abs, "abc")


def test_unpicklable_function_is_refused_before_inputs(no_coordinator):
    import threading

    lock = threading.Lock()
    inputs, consumed = _untouched()
    with pytest.raises(InvalidArgument, match="function_ could not be pickled"):
        remote_parallel_map(lambda x: lock, inputs)
    assert not consumed


def test_empty_inputs_return_empty_without_contacting_anyone(no_coordinator):
    assert remote_parallel_map(abs, []) == []
    assert list(remote_parallel_map(abs, iter(()), generator=True)) == []


def test_spec_fields():
    spec = validate.build_spec(
        "abc",
        func_cpu=2,
        func_ram=4.0,
        func_gpu=None,
        parallelism=-1,
        expected_inputs=10,
        timeout=2.5,
        retries=3,
        environment={"kind": "node_default"},
        detach=False,
    )
    assert spec == {
        "version": 1,
        "job_id": "abc",
        "func_cpu": 2,
        "func_ram_gb": 4,
        "func_gpu": None,
        "parallelism": -1,
        "expected_inputs": 10,
        "timeout_s": 2.5,
        "retries": 3,
        "stop_on_exception": True,
        "python_version": validate.PYTHON_VERSION,
        "environment": {"kind": "node_default"},
        "detach": False,
    }


def test_gpu_caps_parallelism_at_100():
    common = dict(func_cpu=1, func_ram=1, expected_inputs=None, timeout=None, retries=0, environment={"kind": "node_default"}, detach=False)
    assert validate.build_spec("a", func_gpu="A100", parallelism=-1, **common)["parallelism"] == 100
    assert validate.build_spec("a", func_gpu="A100", parallelism=500, **common)["parallelism"] == 100
    assert validate.build_spec("a", func_gpu="A100", parallelism=8, **common)["parallelism"] == 8
    assert validate.build_spec("a", func_gpu=None, parallelism=500, **common)["parallelism"] == 500


def test_environment_kinds(tmp_path, monkeypatch):
    clone = validate.check_environment(None, None)
    assert clone["kind"] == "clone"
    import cloudpickle

    assert f"cloudpickle=={cloudpickle.__version__}" in clone["distributions"]
    assert not any(d.lower().startswith(("pip==", "fleetmap==")) for d in clone["distributions"])
    monkeypatch.setenv("FLEETMAP_CLONE", "0")
    assert validate.check_environment(None, None) == {"kind": "node_default"}
    assert validate.check_environment(None, []) == {"kind": "packages", "packages": []}
    assert validate.check_environment(None, ("numpy==1.26.4 ",)) == {"kind": "packages", "packages": ["numpy==1.26.4"]}
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\n")
    assert validate.check_environment(dockerfile, None) == {"kind": "dockerfile", "content": "FROM debian\n", "context": []}
    with pytest.raises(InvalidArgument, match="either dockerfile or packages, not both"):
        validate.check_environment(dockerfile, ["x"])


def test_inputs_length_is_sent_when_known():
    assert validate.check_inputs([1, 2, 3]) == 3
    assert validate.check_inputs(range(10)) == 10
    assert validate.check_inputs(x for x in range(3)) is None
