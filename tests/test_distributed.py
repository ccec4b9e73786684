"""The Ray layer (banscan.distributed) on a 2-CPU local Ray instance: results reach the driver's writer, shared
inputs go once through the object store, a dead worker is retried and then recorded as a failure while the run
goes on, bad input ends the run, and banscan works without Ray installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from banscan._utils import BanscanError
from banscan.distributed import RayConfig, TaskFailure, run_tasks

pytest.importorskip("ray")
import _ray_jobs  # noqa: E402  (tests/ is on sys.path; Ray workers get the file from the ray_local fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_local):
    return ray_local


def _run(specs, cfg=None, **kw):
    """Run ``_ray_jobs.work`` for ``{key: kwargs}``; returns (results, failures, counts)."""
    got, failures = {}, []
    counts = run_tasks(_ray_jobs.work, list(specs.items()), cfg or RayConfig(), got.__setitem__, failures.append,
                       **kw)
    return got, failures, counts


def test_results_reach_the_writer_and_shared_inputs_are_passed():
    got, failures, counts = _run({i: {"x": i} for i in range(8)}, shared={"offset": [1, 2]})
    assert counts == {"done": 8, "failed": 0} and not failures
    assert got == {i: i + 3 for i in range(8)}


def test_jobs_are_read_lazily_and_in_flight_is_bounded():
    pulled, in_flight = [], []

    def gen():
        for i in range(6):
            pulled.append(i)
            yield i, {"x": i, "sleep": 0.05}

    run_tasks(_ray_jobs.work, gen(), RayConfig(), lambda k, v: in_flight.append(len(pulled) - len(in_flight)),
              max_in_flight=2)
    assert len(in_flight) == 6 and max(in_flight) <= 2  # never more than 2 jobs submitted and not yet written


def test_a_worker_that_dies_is_retried_then_recorded_and_the_run_goes_on(tmp_path):
    specs = {"once": {"x": 1, "mode": "die_once", "marker": str(tmp_path / "once")},
             "always": {"x": 2, "mode": "die"}, "fine": {"x": 3}}
    got, failures, counts = _run(specs, RayConfig(max_retries=1), shared={"offset": [10]})
    assert counts == {"done": 2, "failed": 1}
    assert got == {"once": 11, "fine": 13}  # the first attempt of "once" died (its marker says so), the retry ran
    assert (tmp_path / "once").exists()
    [f] = failures
    assert isinstance(f, TaskFailure) and (f.key, f.kind) == ("always", "worker_died") and "died" in f.reason


def test_an_error_is_recorded_with_its_reason_and_bad_input_ends_the_run():
    got, failures, counts = _run({1: {"x": 1, "mode": "error"}, 2: {"x": 2}}, RayConfig(max_retries=1))
    assert counts == {"done": 1, "failed": 1} and got == {2: 2}
    assert failures == [TaskFailure(1, "KeyError: 'job 1 is broken'", "error")]
    with pytest.raises(BanscanError, match="bad input for job 0"):
        _run({0: {"x": 0, "mode": "bad"}, 1: {"x": 1, "sleep": 5}, 2: {"x": 2, "sleep": 5}})


def test_a_writer_error_propagates():
    def writer(k, v):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_tasks(_ray_jobs.work, [(i, {"x": i}) for i in range(4)], RayConfig(), writer)


def test_resources_are_checked():
    with pytest.raises(BanscanError, match="GPU"):
        _run({0: {"x": 0}}, RayConfig(gpus_per_task=0.5))
    with pytest.raises(BanscanError, match="cpus-per-task"):
        _run({0: {"x": 0}}, RayConfig(cpus_per_task=0))


def test_banscan_works_without_ray():
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"  # `import ray` now raises ImportError, as when it is not installed
        "import banscan, banscan.cli\n"
        "from banscan.distributed import RayConfig, ray_available, run_tasks\n"
        "assert not ray_available()\n"
        "try:\n"
        "    run_tasks(print, [], RayConfig(), print)\n"
        "except banscan.BanscanError as e:\n"
        "    assert 'banscan[ray]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error without ray')\n"
        "assert banscan.cli.main(['models']) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_importing_banscan_does_not_import_ray():
    code = "import sys, banscan, banscan.cli, banscan.distributed; assert 'ray' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
