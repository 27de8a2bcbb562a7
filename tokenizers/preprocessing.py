"""`speechtok.preprocess(...)` (this module: `speechtok.preprocessing`): tokenize a dataset into resumable
code shards (see `speechtok.shards`).

How a job runs:

1. Inputs (directory, list, manifest; `speechtok.inputs`) are read; durations come from the
   manifest or the file headers. Items are sorted by duration (length bucketing: little padding)
   and cut into shards of at most ``shard_items`` items / ``shard_seconds`` of audio. This plan is
   written once (``plan.jsonl``), so every engine and every rerun encodes the same shards.
2. Each pending shard is encoded in length-homogeneous batches (at most ``batch_seconds`` of
   padded audio and ``max_batch_size`` items); audio is loaded and resampled by background
   threads ahead of the model. A file that fails to load or encode is recorded as an error in its
   shard and skipped.
3. A shard is committed atomically (safetensors, then its JSON index = done marker). A rerun
   after a crash or ``kill -9`` keeps the committed shards that verify (sha256, codebooks, the
   plan's items, the job's model) and redoes the rest: every item ends up in exactly one shard,
   none is lost, none encoded twice in the output. A rerun with other settings (model,
   codebooks, inputs, shard sizes) is refused.
4. When all shards are there, ``index.jsonl`` and ``errors.jsonl`` are written.

A run holds an exclusive lock on the output directory (`speechtok.shards.lock_output`): a second
run on it is refused at once, so two runs never mix, and temp files are only cleaned under the lock.

``engine="ray"`` runs step 2-3 on Ray Data (`speechtok.ray_engine`); output bytes are identical.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from .atomic import is_temp_file
from .formats import MAX_BATCH, MAX_CODEBOOKS, get_field
from .inputs import MAX_ITEM_SECONDS, AudioItem, probe_duration, read_inputs
from .preprocess_encoder import ShardEncoder, _prefetch, _tokenizer_meta
from .shards import (ERRORS_FILE, INDEX_FILE, JOB_FILE, PLAN_FILE, SHARD_DIR, SHARDS_FORMAT,
                     SHARDS_FORMAT_VERSION, ShardError, done_shards, lock_output, read_job, read_shard_index,
                     shard_name, verify_shard, write_json_lines, write_text)

log = logging.getLogger("speechtok.preprocessing")
MAX_SHARDS = 10 ** 8
# PreprocessConfig field -> (kind, lowest, highest); floats must also be finite and > lowest
_CONFIG_LIMITS = {"shard_items": (int, 1, 10 ** 9), "shard_seconds": (float, 0.0, 1e9),
                  "batch_seconds": (float, 0.0, 1e7), "max_batch_size": (int, 1, MAX_BATCH),
                  "num_workers": (int, 1, 4096), "prefetch_items": (int, 1, 10 ** 7),
                  "long_file_seconds": (float, 0.0, MAX_ITEM_SECONDS), "num_codebooks": (int, 1, MAX_CODEBOOKS)}
_OPTIONAL = {"num_codebooks"}  # may also be None


@dataclass(frozen=True)
class PreprocessConfig:
    """How a job is cut and batched.

    Attributes:
        shard_items: max items per shard.
        shard_seconds: max seconds of audio per shard.
        batch_seconds: max padded seconds of audio per model batch (``B * longest``).
        max_batch_size: max items per model batch.
        num_codebooks: keep the first k codebooks (None: all).
        num_workers: background audio-loading threads.
        prefetch_items: items loaded ahead of the model.
        long_file_seconds: whole-file items longer than this are not loaded whole: a codec
            streams them from disk in blocks (`CodecTokenizer.encode_file`; same codes).
    """

    shard_items: int = 1000
    shard_seconds: float = 3600.0
    batch_seconds: float = 200.0
    max_batch_size: int = 64
    num_codebooks: Optional[int] = None
    num_workers: int = 4
    prefetch_items: int = 256
    long_file_seconds: float = 120.0

    def __post_init__(self):
        for name, (kind, lo, hi) in _CONFIG_LIMITS.items():
            v = getattr(self, name)
            if v is None and name in _OPTIONAL:
                continue
            ok = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool)
            if not (ok and (lo < v <= hi if kind is float else lo <= v <= hi) and math.isfinite(v)):
                rng = f"in ({lo}, {hi:g}]" if kind is float else f"in [{lo}, {hi}]"
                what = ("None or " if name in _OPTIONAL else "") + ("an int" if kind is int else "a float")
                raise ValueError(f"PreprocessConfig.{name} must be {what} {rng}, got {v!r}")


@dataclass(frozen=True)
class PreprocessResult:
    """What a `preprocess` call did.

    Attributes:
        output: the output directory.
        num_items: items in the job (encoded + errors), over all runs.
        num_errors: items that failed (see ``errors.jsonl``).
        num_shards: shards in the job.
        shards_done_before: shards already committed when this run started (resume).
        audio_seconds: seconds of audio encoded by this run.
        wall_seconds: wall time of this run.
        errors: the failed items' records (``id``, ``path``, ``error``, ``shard``), as in ``errors.jsonl``.
        redone: why each committed shard found invalid on resume (corrupt, foreign) was redone.
    """

    output: Path
    num_items: int
    num_errors: int
    num_shards: int
    shards_done_before: int
    audio_seconds: float
    wall_seconds: float
    errors: tuple = ()
    redone: tuple = ()


# ------------------------------------------------------------------------------------- planning
def plan_shards(items: Sequence[AudioItem], config: PreprocessConfig) -> list[list[AudioItem]]:
    """Sort items by duration (unknown ones last) and cut them into shards.

    Durations missing from the inputs are read from file headers by ``num_workers`` threads.
    """
    with ThreadPoolExecutor(max(1, config.num_workers)) as pool:
        durs = dict(zip((it.id for it in items), pool.map(probe_duration, items, chunksize=256)))
    keyed = [it if it.duration is not None or durs[it.id] is None else
             AudioItem(**dict(asdict(it), duration=durs[it.id])) for it in items]
    keyed.sort(key=lambda it: (it.duration is None, it.duration or 0.0, it.id))
    shards: list[list[AudioItem]] = []
    cur: list[AudioItem] = []
    secs = 0.0
    for it in keyed:
        d = it.duration or 0.0
        if cur and (len(cur) >= config.shard_items or secs + d > config.shard_seconds):
            shards.append(cur)
            cur, secs = [], 0.0
        cur.append(it)
        secs += d
    if cur:
        shards.append(cur)
    return shards


def _inputs_hash(items: Sequence[AudioItem]) -> str:
    h = hashlib.sha256()
    for it in sorted(items, key=lambda x: x.id):
        h.update(f"{it.id}\0{it.path}\0{it.start}\0{it.end}\n".encode())
    return h.hexdigest()


def _check_job(job: dict, path: Path) -> None:
    """Types and ranges of the ``job.json`` fields a run relies on (raises `ShardError` naming the file)."""
    def get(key, kind, **kw):
        return get_field(job, key, kind, path, ShardError, "shards job", **kw)

    get("model_id", str)
    n = get("num_shards", int, lo=0, hi=MAX_SHARDS)
    secs = get("shard_audio_seconds", list)
    if len(secs) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                 for x in secs):
        raise ShardError(f"{path}: shards job 'shard_audio_seconds' must be {n} numbers")
    get_field(get("tokenizer", dict), "codebook_sizes", list, path, ShardError, "shards job tokenizer")


def open_job(output: Path, items: Sequence[AudioItem], tok: Any, model_spec: str,
             config: PreprocessConfig) -> dict:
    """Create the job (``plan.jsonl``, then ``job.json``) or check that an existing one matches:
    same model, tokenizer metadata, codebooks, inputs and shard sizes (else `ShardError`).
    ``output`` exists (`preprocess` creates it before locking it)."""
    ihash = _inputs_hash(items)
    job_path = output / JOB_FILE
    if job_path.is_file():
        job = read_job(output)
        _check_job(job, job_path)
        want = {"model_id": tok.model_id, "num_codebooks": config.num_codebooks, "inputs_sha256": ihash,
                "tokenizer": _tokenizer_meta(tok, config.num_codebooks), "shard_items": config.shard_items,
                "shard_seconds": config.shard_seconds}
        for key, val in want.items():
            if job.get(key) != val:
                raise ShardError(f"{job_path}: existing job has {key}={job.get(key)!r}, this run has {val!r}; "
                                 "rerun with the job's settings, or use a new output directory (or delete this "
                                 "one) for a different job")
        return job
    if done_shards(output):
        raise ShardError(f"{output / SHARD_DIR}: holds shards but {output} has no {JOB_FILE} (a broken or "
                         "foreign job); use an empty output directory")
    plan = plan_shards(items, config)
    write_json_lines(output / PLAN_FILE, [{"shard": n, "items": [it.to_json() for it in shard]}
                                          for n, shard in enumerate(plan)])
    job = {"format": SHARDS_FORMAT, "format_version": SHARDS_FORMAT_VERSION, "model": model_spec,
           "model_id": tok.model_id, "tokenizer": _tokenizer_meta(tok, config.num_codebooks),
           "num_codebooks": config.num_codebooks, "inputs_sha256": ihash, "num_items": len(items),
           "num_shards": len(plan), "shard_items": config.shard_items, "shard_seconds": config.shard_seconds,
           "shard_audio_seconds": [round(sum(it.duration or 0.0 for it in shard), 3) for shard in plan]}
    write_text(job_path, json.dumps(job, indent=2, sort_keys=True) + "\n", "shards job")  # last: job exists
    return job


def _plan_records(output: Path) -> Iterator[tuple[int, str]]:
    """``(shard number, unparsed line)`` for each line of the plan."""
    path = output / PLAN_FILE
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                yield n, line
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: unreadable plan ({e})") from e


def _parse_plan_line(output: Path, n: int, line: str) -> list[AudioItem]:
    path = output / PLAN_FILE
    try:
        rec = json.loads(line)
        if int(rec["shard"]) != n:
            raise ShardError(f"{path}:{n + 1}: expected shard {n}, found {rec['shard']}")
        return [AudioItem.from_json(d) for d in rec["items"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{path}:{n + 1}: unreadable plan ({type(e).__name__}: {e})") from e


def iter_plan(output: Path, skip: Iterable[int] = ()) -> Iterator[tuple[int, list[AudioItem]]]:
    """``(shard number, items)`` of the plan, parsing only the shards not in ``skip`` (lazily, so a
    resumed job of millions of items does not hold the whole plan in memory)."""
    skip = set(skip)
    for n, line in _plan_records(output):
        if n not in skip:
            yield n, _parse_plan_line(output, n, line)


def check_done(output: Path, job: dict) -> tuple[set[int], list[str]]:
    """Committed shards that may be kept on resume, and why each other one is redone.

    A shard is kept only when `speechtok.shards.verify_shard` finds it intact and holding exactly
    its plan items, made by the job's model with the job's codebooks; the others lose their
    index (the done marker) so they are encoded again. The plan must have ``num_shards`` lines.
    """
    done = done_shards(output)
    K = len(job["tokenizer"]["codebook_sizes"])
    keep, redone = set(), []
    lines = 0
    for n, line in _plan_records(output):
        lines += 1
        if n in done:
            expected = [(it.id, it.path) for it in _parse_plan_line(output, n, line)]
            problem = verify_shard(output, n, expected, job["model_id"], K)
            if problem is None:
                keep.add(n)
            else:
                redone.append(f"{problem}; shard {n} is redone")
    if lines != int(job["num_shards"]):
        raise ShardError(f"{output / PLAN_FILE}: has {lines} shards, {JOB_FILE} says {job['num_shards']}")
    redone += [f"{output / SHARD_DIR / shard_name(n)}.json: not in the plan; removed" for n in done if n >= lines]
    for n in set(done) - keep:
        log.warning("redoing shard %d of %s", n, output)
        _remove(output / SHARD_DIR / f"{shard_name(n)}.json")
    return keep, redone


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ShardError(f"{path}: cannot remove an invalid shard ({e.strerror or e})") from e


class _Progress:
    """tqdm bar over seconds of audio that shows hours done and hours of audio per second."""

    def __init__(self, total_seconds: float, enabled: bool):
        from tqdm.auto import tqdm

        self.total, self.done, self.t0 = total_seconds, 0.0, time.time()
        self.bar = tqdm(total=max(total_seconds, 1e-9), disable=not enabled, desc="preprocess",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self._post()

    def _post(self) -> None:
        rate = self.done / 3600 / max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.done / 3600:.3f}/{self.total / 3600:.3f} h audio, {rate:.4g} h/s",
                                 refresh=False)

    def update(self, seconds: float) -> None:
        self.done += seconds
        self.bar.update(max(0.0, min(seconds, self.bar.total - self.bar.n)))
        self._post()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def run_local(encoder: ShardEncoder, pending: Iterable[tuple[int, list[AudioItem]]], bar) -> float:
    """Encode pending shards on this machine with background loading; returns audio seconds done."""
    done_secs = 0.0
    flat = ((n, it) for n, shard in pending for it in shard)
    with ThreadPoolExecutor(max(1, encoder.config.num_workers)) as pool:
        stream = _prefetch(flat, encoder.load, pool, encoder.config.prefetch_items)
        for n, group in itertools.groupby(stream, key=lambda x: x[0]):
            loaded = [(it, w) for _, it, w in group]
            rec = encoder.encode_loaded(n, loaded)
            secs = sum(it["audio_samples"] for it in rec["items"]) / encoder.tok.sample_rate
            done_secs += secs
            bar.update(secs)
    return done_secs


def finalize(output: Path, job: dict) -> tuple[int, list[dict]]:
    """Write ``index.jsonl`` and ``errors.jsonl`` from the shard indices, one shard in memory at a
    time; returns (items, error records)."""
    shards = done_shards(output)
    errors: list[dict] = []

    def records():
        for n, path in shards.items():
            rec = read_shard_index(path)
            errors.extend(dict(e, shard=n) for e in rec["errors"])
            for it in rec["items"]:
                yield {"id": it["id"], "shard": n, "source": it["path"], "start": it.get("start", 0.0),
                       "end": it.get("end"), "num_frames": it["num_frames"], "audio_samples": it["audio_samples"],
                       "text": it.get("text"), "speaker": it.get("speaker"), "model_id": rec["model_id"]}

    n_items = write_json_lines(output / INDEX_FILE, records())
    write_json_lines(output / ERRORS_FILE, errors)
    return n_items, errors


def _clean_temp(output: Path) -> None:
    """Remove temp files left by runs that died (call with the directory locked: no run is writing)."""
    for d in (output, output / SHARD_DIR):
        if d.is_dir():
            for p in d.iterdir():
                if is_temp_file(p):
                    with contextlib.suppress(OSError):
                        p.unlink()


def _check_output(output: Path, inputs: Any) -> None:
    """The output must be a directory (or absent) and none of the inputs."""
    if output.exists() and not output.is_dir():
        raise ShardError(f"{output}: exists and is not a directory")
    sources = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    out = os.path.realpath(output)
    for src in sources:
        if isinstance(src, (str, os.PathLike)) and os.path.realpath(os.path.expanduser(str(src))) == out:
            raise ShardError(f"{output}: the output directory is an input; choose another output directory")


def preprocess(inputs: Any, output: Union[str, Path], model: Any = None, *, device: str = "cpu",
               engine: str = "local", address: Optional[str] = None, config: PreprocessConfig = PreprocessConfig(),
               progress: bool = True, ray_workers: Optional[int] = None) -> PreprocessResult:
    """Tokenize a dataset into shards under ``output`` (resumable; see the module docstring).

    Args:
        inputs: a directory, a list of paths, a manifest (speechtok or lhotse JSONL), a list file,
            or a Hugging Face dataset (`speechtok.inputs.read_inputs`).
        output: output directory; rerunning with the same inputs and model resumes the job.
        model: a model name/directory for `speechtok.load`, or a tokenizer object (default model if None).
        device: torch device for the model ("cpu", "cuda", ...).
        engine: "local" (this machine) or "ray" (Ray Data; needs ``speechtok[ray]``).
        address: Ray cluster address (None: start a local one).
        config: sharding and batching (`PreprocessConfig`).
        progress: show a progress bar (hours of audio, and hours of audio per second).
    """
    from . import registry

    t0 = time.time()
    output = Path(output)
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from .ray_engine import _import_ray, check_address

        _import_ray()
        check_address(address)
    if model is None or isinstance(model, (str, Path)):
        tok = registry.load(model, device=device if engine == "local" else "cpu", encoder_only=True)
        spec = str(model) if model is not None else str(registry.DEFAULT_MODEL)
        spec = str(Path(spec).resolve()) if Path(spec).exists() else spec
    else:
        tok, spec = model, model.model_id
    items = read_inputs(inputs)
    _check_output(output, inputs)
    if config.num_codebooks is not None and config.num_codebooks > len(tok.codebook_sizes):
        raise ValueError(f"num_codebooks={config.num_codebooks}: {tok.model_id} has "
                         f"{len(tok.codebook_sizes)} codebooks")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShardError(f"{output}: cannot create the output directory ({e.strerror or e})") from e
    with lock_output(output):
        job = open_job(output, items, tok, spec, config)
        _clean_temp(output)
        done, redone = check_done(output, job)
        secs_per_shard = job["shard_audio_seconds"]
        total = sum(sec for n, sec in enumerate(secs_per_shard) if n not in done)
        pending = iter_plan(output, skip=done)
        encoder = ShardEncoder(tok, output, config)
        with _Progress(total, progress) as bar:
            if len(done) == int(job["num_shards"]):
                secs = 0.0
            elif engine == "local":
                secs = run_local(encoder, pending, bar)
            else:
                from .ray_engine import run_ray

                secs = run_ray(model=tok if spec == tok.model_id else spec,
                               output=output, pending=pending, config=config, device=device, address=address,
                               num_workers=ray_workers, bar=bar)
        n_items, errors = finalize(output, job)
    return PreprocessResult(output=output, num_items=n_items + len(errors), num_errors=len(errors),
                            num_shards=int(job["num_shards"]), shards_done_before=len(done), audio_seconds=secs,
                            wall_seconds=time.time() - t0, errors=tuple(errors), redone=tuple(redone))
