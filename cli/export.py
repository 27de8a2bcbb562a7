"""``speechtok export SOURCE... -o OUT --format F``: training data for LM trainers (`speechtok.lm.export`)."""
from __future__ import annotations

import sys

import click

FORMATS = ("parquet", "tokens", "units-text", "lhotse")  # == speechtok.lm.export.FORMATS (kept light: no torch)


def _fail(message, status: int) -> None:
    from speechtok.formats import safe_text

    click.echo(f"error: {safe_text(message, 1000)}", err=True)
    sys.exit(status)


@click.command("export")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="What to write (see above).")
@click.option("--pattern", type=click.Choice(["flatten", "delay"]), default=None,
              help="Token layout: flatten (time-major, default) or delay (MusicGen's delay pattern).")
@click.option("--parallel", is_flag=True,
              help="Delay pattern as K parallel streams (input_ids [K][L]; parquet only; implies --pattern delay).")
@click.option("--offset", type=int, default=None, help="First audio id (ids below it are left to e.g. text).")
@click.option("--bos/--no-bos", default=None, help="Start each utterance with bos (default: no).")
@click.option("--eos/--no-eos", default=None, help="End each utterance with eos (default: yes for tokens, else no).")
@click.option("--codebooks", type=int, default=None, help="Keep the first K codebooks (default: all).")
@click.option("--codebook", type=int, default=None, help="units-text: the codebook written (default 0).")
@click.option("--columns", type=click.Choice(["both", "codes", "ids"]), default=None,
              help="parquet: codes, input_ids or both columns (default both).")
@click.option("--rows-per-file", type=int, default=None, help="parquet: rows per part file (default 100000).")
@click.option("--force", is_flag=True, help="Replace an existing export with other settings, or write into a "
                                            "non-empty directory (only this command's files are removed).")
def export(sources, output, fmt, pattern, parallel, offset, bos, eos, codebooks, codebook, columns, rows_per_file,
           force):
    """Export SOURCES (shard directories from `speechtok preprocess`, .stok files or folders of
    them; one model's codes) to OUT as training data for LM trainers. One utterance at a time:
    memory stays flat. OUT/export.json (written last) records the format, token layout, model id,
    counts and settings; rerunning the same command is a no-op.

    \b
    Formats:
      parquet     OUT/data/part-00000.parquet ...: one row per utterance: id, codes [K][T], input_ids
                  (the layout's LM ids), num_frames, num_tokens, durations, seconds, text,
                  speaker; layout and model id in the schema metadata. Read by Hugging Face
                  datasets (load_dataset("parquet", data_dir="OUT/data")), pandas, pyarrow.
      tokens      OUT/tokens.bin + tokens.idx: every utterance's LM ids in one flat binary
                  (uint16, or int32 for vocabularies over 65536) with a Megatron-LM
                  MMapIndexedDataset index (--data-path OUT/tokens); tokens.bin alone is nanoGPT's
                  train.bin (np.memmap). eos (default on) separates utterances. Plus meta.json
                  (layout, dtype, vocab_size) and documents.jsonl (ids in stream order). Flat
                  layouts only.
      units-text  OUT/units.txt: "<id>|<u0> <u1> ..." lines of one codebook (--codebook, default
                  0), the fairseq/GSLM unit format (speech resynthesis, unit LMs). No layout
                  options; nothing deduplicated.
      lhotse      OUT/cuts.jsonl.gz + OUT/codes/: lhotse MonoCuts with supervision (text,
                  speaker), recording (the source audio, when readable here) and the codes
                  attached (cut.load_codes(): [T, K]). Needs pip install 'speechtok[lm]'.
    """
    if fmt == "units-text" and (pattern or parallel or offset is not None or bos is not None or eos is not None):
        _fail("--format units-text writes codes, not LM ids: --pattern/--parallel/--offset/--bos/--eos do not apply", 2)
    if codebook is not None and fmt != "units-text":
        _fail("--codebook: only with --format units-text (--codebooks K keeps the first K)", 2)
    if fmt != "parquet" and (columns is not None or rows_per_file is not None):
        _fail("--columns/--rows-per-file: only with --format parquet", 2)
    if parallel and pattern == "flatten":
        _fail("--parallel: needs --pattern delay (flatten is one stream)", 2)
    for opt, v in (("--codebooks", codebooks), ("--rows-per-file", rows_per_file)):
        if v is not None and v < 1:
            _fail(f"{opt} {v}: must be >= 1", 2)
    if offset is not None and offset < 0:
        _fail(f"--offset {offset}: must be >= 0", 2)
    layout = None
    if fmt != "units-text":
        layout = {k: v for k, v in dict(pattern="delay" if parallel else pattern, flat=False if parallel else None,
                                        offset=offset, add_bos=bos, add_eos=eos).items() if v is not None}
    options = {k: v for k, v in dict(columns=columns, rows_per_file=rows_per_file).items() if v is not None}

    from speechtok.lm.export import ExportError, ExportUsageError, export as run

    try:
        res = run(list(sources), output, fmt, layout=layout, codebooks=codebooks, codebook=codebook, force=force,
                  **options)
    except ExportUsageError as e:
        _fail(e, 2)
    except ExportError as e:
        _fail(e, 1)
    from speechtok.formats import safe_text

    for note in res.notes:
        click.echo(f"note: {safe_text(note, 1000)}", err=True)
    if res.skipped:
        click.echo(f"{safe_text(output, 1000)}: already holds this export ({res.num_utterances} utterances); "
                   "nothing to do", err=True)
        return
    click.echo(f"exported {res.num_utterances} utterances ({res.num_frames} frames, {res.num_tokens} tokens, "
               f"{res.seconds / 3600:.3f} h) of {safe_text(res.model_id, 200)} as {fmt} -> "
               f"{safe_text(output, 1000)} ({', '.join(res.files)})", err=True)
