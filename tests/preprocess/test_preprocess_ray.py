"""The Ray Data engine writes byte-identical shards to the local engine (a local cluster on loopback).

Ray binds to the machine's external interface even when told 127.0.0.1, so the cluster runs in a
network namespace of its own with only ``lo`` up (``unshare -n``; needs root or user namespaces).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from speechtok.preprocessing import PreprocessConfig, preprocess

pytest.importorskip("ray.data", reason="the Ray engine needs `pip install speechtok[ray]`")

CFG = dict(shard_items=8, max_batch_size=4, num_workers=2)

RAY_JOB = """
import sys
import ray
from speechtok.preprocessing import PreprocessConfig, preprocess

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
res = preprocess(sys.argv[1], sys.argv[2], "mulaw-16k", engine="ray", config=PreprocessConfig(**{cfg}),
                 progress=False)
print("RESULT", res.num_items, res.num_errors, res.num_shards)
ray.shutdown()
"""


def _netns_available() -> str:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare and ip (util-linux, iproute2)"
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot make a network namespace here (unshare -n: {r.stderr.strip()[:200]}); run as root"
    return ""


def test_ray_engine_output_identical_to_local(tmp_path):
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    import soundfile as sf

    rng = np.random.default_rng(2)
    data = tmp_path / "in"
    data.mkdir()
    for i in range(30):
        sr = (16000, 8000)[i % 2]
        sf.write(str(data / f"u{i:02d}.wav"), (0.2 * rng.standard_normal(int(rng.integers(300, 2500)))).astype("float32"), sr)
    (data / "zz_bad.wav").write_bytes(b"RIFF....junk")
    local = preprocess(data, tmp_path / "local", "mulaw-16k", config=PreprocessConfig(**CFG), progress=False)
    script = tmp_path / "ray_job.py"
    script.write_text(textwrap.dedent(RAY_JOB.replace("{cfg}", repr(CFG))))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="")
    r = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable,
                        str(script), str(data), str(tmp_path / "ray")], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"RESULT {local.num_items} 1 {local.num_shards}" in r.stdout
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert len(files) == 2 * local.num_shards + 4
    for f in files:
        assert (tmp_path / "local" / f).read_bytes() == (tmp_path / "ray" / f).read_bytes(), f
