"""Hostile and careless use of `speechtok preprocess`: concurrent runs, stale or foreign resume
state, failed items, malformed manifests and cuts, bad options, unreachable Ray, unwritable output.

Each misuse must give a one-line error naming the file (or option) and the problem, a non-zero
exit, and no partial output.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from speechtok.cli.main import main
from speechtok.inputs import InputError, read_inputs
from speechtok.preprocessing import PreprocessConfig, preprocess
from speechtok.shards import LOCK_FILE, ShardError, ShardSet

MODEL = "mulaw-16k"


def make_wavs(root: Path, n: int, seconds: float = 0.1, sr: int = 16000) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(n)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = 0.2 * rng.standard_normal(int(seconds * sr) + 37 * i)
        sf.write(str(root / f"f{i:02d}.wav"), x.astype("float32"), sr)
    return root


def cli(*args):
    return CliRunner().invoke(main, ["preprocess", *map(str, args), "--no-progress"])


def one_error_line(r) -> str:
    """The CLI failed with exactly one line on stderr, starting with 'error: '; returns it."""
    assert r.exit_code != 0, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def listing(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ concurrency
BLOCKED_JOB = """
import sys, time
from pathlib import Path
import speechtok
from speechtok.preprocessing import PreprocessConfig, preprocess

started, release = Path(sys.argv[3]), Path(sys.argv[4])
tok = speechtok.load("mulaw-16k")
encode = tok.encode
def blocked_encode(*a, **k):   # the first batch waits until the test says go
    started.touch()
    while not release.exists():
        time.sleep(0.01)
    return encode(*a, **k)
tok.encode = blocked_encode
res = preprocess(sys.argv[1], sys.argv[2], tok, config=PreprocessConfig(shard_items=4, num_workers=1), progress=False)
print("FINISHED", res.num_items, res.num_errors)
"""


def test_second_run_on_a_busy_output_is_refused_and_deletes_nothing(tmp_path):
    """Run A (another process) is mid-job; run B on the same directory, with other settings or the
    same, is refused at once with one line, and does not touch A's files (its temp file in flight
    included). Before the lock both ran: B resumed A's shards, or mixed its own -k into them."""
    data = make_wavs(tmp_path / "in", 10)
    out, started, release = tmp_path / "out", tmp_path / "started", tmp_path / "release"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(BLOCKED_JOB))
    proc = subprocess.Popen([sys.executable, "-P", str(script), str(data), str(out), str(started), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not started.exists():
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            assert time.time() < deadline, "run A never started encoding"
            time.sleep(0.02)
        inflight = out / "shards" / ".shard-000000.safetensors.tmp-inflight.safetensors"
        inflight.parent.mkdir(exist_ok=True)
        inflight.write_bytes(b"run A is writing this")
        before = listing(out)
        for extra in ([], ["-k", "1"], ["--shard-items", "2"]):
            line = one_error_line(cli(data, out, "-m", MODEL, *extra))
            assert str(out) in line and "another preprocess run" in line, line
            assert listing(out) == before
        with pytest.raises(ShardError, match="another preprocess run"):
            preprocess(data, out, MODEL, progress=False)
        assert inflight.read_bytes() == b"run A is writing this"
        inflight.unlink()
        release.touch()
        stdout, _ = proc.communicate(timeout=120)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "FINISHED 10 0" in stdout, stdout[-2000:]
    assert not (out / LOCK_FILE).exists()  # released with the run
    ids = [it.id for it in ShardSet(out, verify=True).items()]
    assert sorted(ids) == [f"f{i:02d}" for i in range(10)]
    again = preprocess(data, out, MODEL, config=PreprocessConfig(shard_items=4, num_workers=1), progress=False)
    assert again.shards_done_before == again.num_shards  # the lock is free again after a run


def test_lock_held_by_another_open_file_refuses_before_writing(tmp_path):
    data = make_wavs(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"pid 12345 on elsewhere\n")
        (out / "shards").mkdir()
        stale = out / "shards" / ".shard-000000.json.tmp-x.json"
        stale.write_text("in flight")
        line = one_error_line(cli(data, out, "-m", MODEL))
        assert str(out) in line and "pid 12345 on elsewhere" in line
        assert not (out / "job.json").exists() and stale.exists()
    finally:
        os.close(fd)
    res = preprocess(data, out, MODEL, progress=False)  # lock gone (its holder closed it): runs
    assert res.num_items == 3 and not stale.exists()  # a temp file whose owner is gone is cleaned


# ---------------------------------------------------------------------------------------- resume
def test_rerun_with_other_shard_sizes_is_refused(tmp_path):
    data = make_wavs(tmp_path / "in", 6)
    out = tmp_path / "out"
    preprocess(data, out, MODEL, config=PreprocessConfig(shard_items=2), progress=False)
    before = listing(out)
    with pytest.raises(ShardError, match="shard_items=2, this run has 3"):
        preprocess(data, out, MODEL, config=PreprocessConfig(shard_items=3), progress=False)
    line = one_error_line(cli(data, out, "-m", MODEL, "--shard-items", "2", "--shard-hours", "0.5"))
    assert "job.json" in line and "shard_seconds" in line
    assert listing(out) == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "index", "foreign_items", "other_codebooks"])
def test_invalid_committed_shard_is_redone(tmp_path, damage):
    """A committed shard that is empty, truncated, has a broken index, holds another plan's items
    or codes of another ``num_codebooks`` (left by a concurrent run) is redone, never kept."""
    from speechtok.codec import CodecTokenizer, preset

    torch.manual_seed(0)
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)  # 4 codebooks
    data = make_wavs(tmp_path / "in", 6)
    cfg = PreprocessConfig(shard_items=2, num_workers=1)
    out = tmp_path / "out"
    preprocess(data, out, tok, config=cfg, progress=False)
    good = listing(out)
    st, index = out / "shards" / "shard-000001.safetensors", out / "shards" / "shard-000001.json"
    if damage == "empty":
        st.write_bytes(b"")
    elif damage == "truncated":
        st.write_bytes(st.read_bytes()[:-7])
    elif damage == "index":
        index.write_text('{"format": "speechtok.shards", "format_version": 1, "shard": 1')
    else:
        other = tmp_path / "other"
        if damage == "foreign_items":
            preprocess(make_wavs(tmp_path / "in2", 7), other, tok, config=cfg, progress=False)
        else:
            preprocess(data, other, tok, config=PreprocessConfig(shard_items=2, num_workers=1, num_codebooks=1),
                       progress=False)
        for p in (st, index):
            shutil.copyfile(other / "shards" / p.name, p)
    res = preprocess(data, out, tok, config=cfg, progress=False)
    assert res.shards_done_before == res.num_shards - 1
    assert len(res.redone) == 1 and "shard-000001" in res.redone[0] and "\n" not in res.redone[0]
    assert listing(out) == good  # redone to exactly the bytes of a clean run
    assert len(list(ShardSet(out, verify=True).items())) == 6


def test_shards_without_a_job_are_not_adopted(tmp_path):
    data = make_wavs(tmp_path / "in", 4)
    out = tmp_path / "out"
    preprocess(data, out, MODEL, progress=False)
    (out / "job.json").unlink()
    before = listing(out)
    line = one_error_line(cli(data, out, "-m", MODEL))
    assert "no job.json" in line and str(out / "shards") in line
    assert listing(out) == before


def test_leftover_temp_files_are_neither_inputs_nor_outputs(tmp_path):
    data = make_wavs(tmp_path / "in", 3)
    shutil.copyfile(data / "f00.wav", data / ".f09.wav.tmp-abc.wav")  # another tool's unfinished write
    out = tmp_path / "out"
    first = preprocess(data, out, MODEL, progress=False)
    index = out / "shards" / "shard-000000.json"
    index.rename(out / "shards" / ".shard-000000.json.tmp-old.json")  # an index never committed
    (out / ".job.json.tmp-zzz.json").write_text("{}")
    res = preprocess(data, out, MODEL, progress=False)
    assert (first.num_items, res.shards_done_before) == (3, 0)
    assert sorted(p.name for p in out.rglob(".*")) == []
    assert sorted(it.id for it in ShardSet(out).items()) == ["f00", "f01", "f02"]


# ----------------------------------------------------------------------------------- failed items
def test_failed_items_exit_nonzero_one_safe_line_each(tmp_path):
    data = make_wavs(tmp_path / "in", 3)
    evil = data / "bad\x1b[2Jname.wav"
    evil.write_bytes(b"RIFF\x00\x00junk")
    (data / "also_bad.wav").write_bytes(b"")
    r = cli(data, tmp_path / "out", "-m", MODEL)
    assert r.exit_code == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2 and "\x1b" not in r.stderr
    assert any(ln.startswith(f"error: {data / 'also_bad.wav'}: ") for ln in errors)
    assert any(ln.startswith(f"error: {data}/bad\\x1b[2Jname.wav: ") for ln in errors)
    assert "3 items in 1 shards" in r.stderr and "2 errors" in r.stderr


# ------------------------------------------------------------------------------ manifest validation
def _cut(path, **kw):
    rec = {"id": "c", "start": 0.0, "duration": 0.05, "channel": 0,
           "recording": {"id": "r", "sources": [{"type": "file", "channels": [0], "source": str(path)}],
                         "sampling_rate": 16000, "duration": 0.1}}
    rec.update(kw)
    return rec


BAD_RECORDS = {
    "no_audio": ({"id": "a"}, "needs 'id' and 'audio'"),
    "id_list": ({"id": ["x"], "audio": "f00.wav"}, "'id' must be a non-empty string"),
    "id_empty": ({"id": "", "audio": "f00.wav"}, "'id' must be a non-empty string"),
    "audio_int": ({"id": "a", "audio": 3}, "'audio' must be str"),
    "negative_duration": ({"id": "a", "audio": "f00.wav", "duration": -1.0}, "'duration'=-1.0 is out of range"),
    "nan_duration": ({"id": "a", "audio": "f00.wav", "duration": math.nan}, "'duration' must be float"),
    "string_duration": ({"id": "a", "audio": "f00.wav", "duration": "1.0"}, "'duration' must be float"),
    "zero_duration": ({"id": "a", "audio": "f00.wav", "duration": 0}, "must be > 0"),
    "text_int": ({"id": "a", "audio": "f00.wav", "text": 5}, "'text' must be a string"),
    "missing_file": ({"id": "a", "audio": "nope.wav"}, "nope.wav does not exist"),
    "cut_negative_start": (lambda p: _cut(p, start=-0.5), "'start'=-0.5 is out of range"),
    "cut_nan_duration": (lambda p: _cut(p, duration=math.nan), "'duration' must be float"),
    "cut_beyond_recording": (lambda p: _cut(p, start=0.08, duration=0.5), "lies beyond its recording"),
    "cut_beyond_file": (lambda p: _cut(p, start=0.5, duration=0.1, recording=dict(
        _cut(p)["recording"], duration=9.0)), "lies beyond the end of"),
    "cut_recording_str": (lambda p: _cut(p, recording="r1"), "'recording' must be dict"),
    "cut_no_sources": (lambda p: _cut(p, recording={"id": "r"}), "lacks 'sources'"),
    "cut_missing_file": (lambda p: _cut(p.parent / "gone.wav"), "gone.wav does not exist"),
    "cut_supervision_str": (lambda p: _cut(p, supervisions=["hi"]), "supervisions must be JSON objects"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_manifest_record_is_named_with_its_line(tmp_path, case):
    data = make_wavs(tmp_path / "in", 1)
    rec, problem = BAD_RECORDS[case]
    rec = rec(data / "f00.wav") if callable(rec) else rec
    good = _cut(data / "f00.wav", id="ok") if "recording" in rec else {"id": "ok", "audio": "f00.wav"}
    man = data / "m.jsonl"
    man.write_text(json.dumps(good) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(InputError, match=f"^{man}:2: ") as e:
        read_inputs(man)
    assert problem in str(e.value)
    out = tmp_path / "out"
    line = one_error_line(cli(man, out, "-m", MODEL))
    assert f"{man}:2: " in line and problem in line
    assert not out.exists()


def test_manifest_text_is_printed_safely(tmp_path):
    """Ids and paths from a manifest reach the terminal escaped (no control sequences)."""
    data = make_wavs(tmp_path / "in", 1)
    man = data / "m.jsonl"
    man.write_text(json.dumps({"id": "\x1b]0;pwned\x07", "audio": "\x1b[2J\x1b[31mgone.wav"}) + "\n")
    line = one_error_line(cli(man, tmp_path / "out", "-m", MODEL))
    assert "does not exist" in line and "\x1b" not in line and "\\x1b[2J" in line
    man.write_text(json.dumps({"id": "\x1b]0;pwned\x07", "audio": "f00.wav"}) + "\n"
                   + json.dumps({"id": "\x1b]0;pwned\x07", "audio": "f00.wav"}) + "\n")
    line = one_error_line(cli(man, tmp_path / "out", "-m", MODEL))
    assert "duplicate id" in line and "\x1b" not in line and "\x07" not in line


def test_list_file_naming_a_missing_file(tmp_path):
    make_wavs(tmp_path / "in", 1)
    lst = tmp_path / "files.txt"
    lst.write_text("in/f00.wav\nin/f99.wav\n")
    line = one_error_line(cli(lst, tmp_path / "out", "-m", MODEL))
    assert f"{lst}:2: " in line and "f99.wav does not exist" in line


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("option,value", [("--shard-items", "0"), ("--shard-items", "-3"), ("--batch-size", "0"),
                                          ("--batch-seconds", "-1"), ("--shard-hours", "0"),
                                          ("--shard-hours", "nan"), ("--batch-seconds", "inf"), ("--workers", "0"),
                                          ("--ray-workers", "0"), ("-k", "0")])
def test_nonpositive_sizes_are_refused_up_front(tmp_path, option, value):
    data = make_wavs(tmp_path / "in", 1)
    extra = ("--engine", "ray") if option.startswith("--ray") else ()
    line = one_error_line(cli(data, tmp_path / "out", "-m", MODEL, option, value, *extra))
    assert line.startswith(f"error: {option}: ") and value in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [("shard_items", 0), ("max_batch_size", -1), ("batch_seconds", math.nan),
                                         ("shard_seconds", math.inf), ("shard_items", 2.5), ("num_codebooks", 0),
                                         ("max_batch_size", True), ("long_file_seconds", 0.0)])
def test_config_values_are_checked(field, value):
    with pytest.raises(ValueError, match=f"PreprocessConfig.{field} must be"):
        PreprocessConfig(**{field: value})


def test_output_equal_to_input_is_refused(tmp_path):
    data = make_wavs(tmp_path / "in", 2)
    before = listing(data)
    line = one_error_line(cli(data, data, "-m", MODEL))
    assert str(data) in line and "is an input" in line
    assert listing(data) == before


def test_unreachable_ray_address_fails_fast(tmp_path):
    pytest.importorskip("ray")
    data = make_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    line = one_error_line(cli(data, out, "-m", MODEL, "--engine", "ray", "--address", "127.0.0.1:1"))
    assert "127.0.0.1:1" in line and "no Ray cluster reachable" in line
    line = one_error_line(cli(data, out, "-m", MODEL, "--engine", "ray", "--address", "localhost"))
    assert "expected host:port" in line
    assert not out.exists()


# ------------------------------------------------------------------------------- unwritable output
@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_names_the_file_and_cause(tmp_path):
    data = make_wavs(tmp_path / "in", 1)
    if os.geteuid() == 0:
        with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
            line = one_error_line(cli(data, ro, "-m", MODEL))
            assert f"{ro / LOCK_FILE}: " in line and "Read-only file system" in line
            line = one_error_line(cli(data, ro / "out", "-m", MODEL))
            assert f"{ro / 'out'}: " in line and "Read-only file system" in line
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_error_line(cli(data, ro, "-m", MODEL))
        assert f"{ro / LOCK_FILE}: " in line and "Permission denied" in line
    finally:
        ro.chmod(0o755)


def test_full_disk_names_the_shard_and_cause(tmp_path):
    data = make_wavs(tmp_path / "in", 4, seconds=1.0)  # ~128 KB of int16 codes at 16 kHz
    with tmpfs(tmp_path / "small", "size=64k") as small:
        out = small / "out"
        line = one_error_line(cli(data, out, "-m", MODEL))
        assert f"{out / 'shards' / 'shard-000000.safetensors'}: " in line and "No space left on device" in line
        assert not [p for p in (out / "shards").iterdir()]  # nothing half-written left
