"""kill -9 in the middle of a preprocessing job, rerun: every file exactly once, nothing lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import speechtok
from speechtok.preprocessing import PreprocessConfig, preprocess
from speechtok.shards import ShardSet

CFG = dict(shard_items=20, max_batch_size=5, num_workers=2)

SLOW_JOB = """
import sys, time
import speechtok
from speechtok.preprocessing import PreprocessConfig, preprocess

tok = speechtok.load("mulaw-16k")
encode = tok.encode
def slow_encode(*a, **k):      # slow enough that the job is mid-way when it is killed
    time.sleep(0.1)
    return encode(*a, **k)
tok.encode = slow_encode
preprocess(sys.argv[1], sys.argv[2], tok, config=PreprocessConfig(**{cfg}), progress=False)
print("FINISHED")
"""


def test_sigkill_then_resume_processes_every_file_once(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(1)
    data = tmp_path / "in"
    data.mkdir()
    for i in range(200):
        sf.write(str(data / f"f{i:03d}.wav"), (0.2 * rng.standard_normal(int(rng.integers(400, 3000)))).astype("float32"),
                 16000)
    out = tmp_path / "out"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SLOW_JOB.replace("{cfg}", repr(CFG))))
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(out)], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    try:
        while len(list((out / "shards").glob("shard-*.json"))) < 3:
            assert proc.poll() is None, f"job ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
            assert time.time() < deadline, "job made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-*")}
    n_done = len([n for n in done if n.endswith(".json")])
    assert 3 <= n_done < 10, f"{n_done} shards of 10 were done when killed"
    assert not (out / "index.jsonl").exists()

    tok = speechtok.load("mulaw-16k")
    res = preprocess(data, out, tok, config=PreprocessConfig(**CFG), progress=False)
    assert res.shards_done_before == n_done and res.num_shards == 10 and res.num_errors == 0
    for name, blob in done.items():  # committed shards were kept as they were
        if name.endswith(".json"):
            assert (out / "shards" / name).read_bytes() == blob, name
    shards = ShardSet(out, verify=True)
    ids = [it.id for it in shards.items()]
    assert len(ids) == len(set(ids)) == 200
    index_ids = [line.split('"id": "')[1].split('"')[0] for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(index_ids) == sorted(ids)
    for item in shards.items():
        wav, sr = speechtok.load_audio(Path(item.meta["path"]), sample_rate=16000)
        assert torch.equal(item.codes, tok.encode(wav, sample_rate=sr).codes[0]), item.id
