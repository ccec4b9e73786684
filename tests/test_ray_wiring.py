"""banscan's commands on Ray (the session's 2-CPU local instance, see ``ray_local`` in conftest.py): a zoo build
resumes after its driver is killed, a Ray-built model is the sequential one, a benchmark and its repairs give the
records of the sequential path, and a worker killed mid-run still yields every record. Skipped without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
import _ray_jobs  # noqa: E402  (tests/ is on sys.path; Ray workers get the file from the ray_local fixture)

from banscan.bench import BenchConfig, mitigate_zoo, run_bench  # noqa: E402
from banscan.distributed import RayConfig  # noqa: E402
from banscan.zoo import build_zoo, load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BAN = {"n_opt": 40, "n_eval": 120, "n_steps": 2, "mask_steps": 5, "batch_size": 64, "statistic": "negmask"}
VOLATILE = {"time", "load_s", "wall_s", "peak_mem_mb", "mem_kind", "first_in_process", "timings"}


def _stable(path: Path) -> dict:
    """Records by (model, method), without the fields that measure time or memory."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["model"], r["method"]): {k: v for k, v in r.items() if k not in VOLATILE} for r in recs}


def _diff(a: dict, b: dict) -> str:
    """The fields that differ between two sets of records, for the failure message."""
    return "; ".join(f"{key} {f}: {a[key].get(f)!r} != {b[key].get(f)!r}" for key in sorted(set(a) & set(b))
                     for f in sorted(set(a[key]) | set(b[key])) if a[key].get(f) != b[key].get(f))


@pytest.fixture(scope="module")
def ray_zoo(ray_local, tmp_path_factory):
    """The tiny zoo built through Ray by a driver that is killed after its first model, then resumed."""
    out = tmp_path_factory.mktemp("rayzoo") / "tiny"
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "banscan", "-q", "zoo", "build", "tiny", "--out", str(out),
                             "--ray", address], cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    t0 = time.monotonic()  # the deadline is a guard against a hang, not a speed test: a loaded machine needs minutes
    while not list(out.glob("*-s[0-9].json")) and proc.poll() is None and time.monotonic() - t0 < 600:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started; the cluster is the fixture's
    proc.wait()
    killed_with = {p.stem for p in out.glob("*-s[0-9].json")}
    assert killed_with, proc.stderr.read().decode()[-2000:]
    events = []
    m = build_zoo("tiny", out, ray=RayConfig(), on_model=lambda i, n, c, reused: events.append((c["id"], reused)))
    return out, m, killed_with, events


def test_zoo_build_on_ray_resumes_after_the_driver_is_killed(ray_zoo):
    out, m, killed_with, events = ray_zoo
    assert m["complete"] and len(m["models"]) == len(events)
    assert {i for i, reused in events if reused} == killed_with  # what the killed driver wrote is kept
    assert all(c["status"] == "ok" for c in m["models"])  # the tiny spec's models, backdoored ones included, pass
    assert not list(out.glob("*.tmp"))


def test_a_model_built_on_ray_is_the_sequential_one(ray_zoo):
    import torch
    from safetensors.torch import load

    from banscan.zoo.build import _prepare, train_entry
    from banscan.zoo.spec import _plan

    out, m, _, _ = ray_zoo
    spec = load_spec("tiny")
    entry = next(e for e in _plan(spec) if e["attack"] == "badnets")
    train, test, info, _ = _prepare(spec, out)
    res = train_entry(entry, train, test, info)
    # Equal values (bytes can differ in the sign of zeros: a process's second training takes other CPU kernels)
    mine, ray = load(res["weights"]), load((out / f"{entry['id']}.safetensors").read_bytes())
    assert set(mine) == set(ray) and all(torch.equal(mine[k], ray[k]) for k in mine)
    card = json.loads((out / f"{entry['id']}.json").read_text())
    assert (res["card"]["BA"], res["card"]["ASR"]) == (card["BA"], card["ASR"])


def test_bench_and_repairs_on_ray_give_the_sequential_records(ray_zoo, ray_local, tmp_path):
    from banscan.cli import main

    zoo = ray_zoo[0]
    run_bench(BenchConfig(zoo=str(zoo), methods=("ban",), out=str(tmp_path / "seq"), method_params={"ban": BAN}))
    address = ray_local.get_runtime_context().gcs_address
    params = sum((["--param", f"ban.{k}={v}"] for k, v in BAN.items()), [])
    assert main(["-q", "bench", "--zoo", str(zoo), "--methods", "ban", "--out", str(tmp_path / "ray"), "--no-report",
                 *params, "--ray", address]) == 0
    seq, ray = _stable(tmp_path / "seq" / "results.jsonl"), _stable(tmp_path / "ray" / "results.jsonl")
    assert seq == ray and len(seq) == 4, _diff(seq, ray)
    ft = {"ft": {"epochs": 1, "batch_size": 32}}
    a = mitigate_zoo(zoo, ["ft"], out=tmp_path / "seq", params=ft)
    b = mitigate_zoo(zoo, ["ft"], out=tmp_path / "ray", params=ft, ray=RayConfig())
    def stable(recs):  # by model: Ray writes in completion order
        return sorted(({k: v for k, v in r.items() if k not in ("time_s", "timings")} for r in recs),
                      key=lambda r: r["model"])

    assert len(a) == 2 and stable(a) == stable(b)


def test_a_worker_killed_mid_run_still_yields_every_record(ray_zoo, tmp_path, monkeypatch):
    import banscan.bench.runner as runner

    zoo = ray_zoo[0]
    run_bench(BenchConfig(zoo=str(zoo), methods=("ban",), out=str(tmp_path / "seq"), method_params={"ban": BAN}))
    det = _ray_jobs.DieOnceBAN(seed=0, **BAN)
    det._marker = str(tmp_path / "died")
    monkeypatch.setattr(runner, "_detectors", lambda cfg: {"ban": det})
    counts = run_bench(BenchConfig(zoo=str(zoo), methods=("ban",), out=str(tmp_path / "ray"),
                                   method_params={"ban": BAN}), ray=RayConfig(max_retries=2))
    assert (tmp_path / "died").exists()  # a worker died in its first scan; Ray ran the task again
    assert counts == {"scanned": 4, "errors": 0, "skipped": 0}
    seq, ray = _stable(tmp_path / "seq" / "results.jsonl"), _stable(tmp_path / "ray" / "results.jsonl")
    assert seq == ray, _diff(seq, ray)
