"""speechtok.units: speech units from SSL / Whisper / MFCC features with k-means.

Pipeline (Python; the CLI ``speechtok units ...`` wraps the same calls)::

    from speechtok.units.features import load_extractor
    from speechtok.units.api import extract_to_store, train_unit_tokenizer
    ext = load_extractor("whisper", "whisper:tiny.en", layer=3, pad_to_window=False)  # or "hubert", "mfcc", ...
    store = extract_to_store("manifest.jsonl", ext, "feats/")              # safetensors shards + index.json
    tok = train_unit_tokenizer(store, ext, n_clusters=500, dedup=True)     # faiss on a bounded sample
    tok.save("whisper-l3-km500")                                           # speechtok.load("whisper-l3-km500")
    codes = tok.encode(wav, sample_rate=sr)                                # Codes [B, 1, T] (+ durations)
    train_vocoder("whisper-l3-km500", "vocoder.json", "runs/voc",          # codec TrainConfig schema
                  export_to="whisper-l3-km500-voc")                        # speechtok units train-vocoder
    speechtok.load("whisper-l3-km500-voc").decode(codes)                   # Waveform [B, 1, S]

The built-in units default, ``speechtok.load("units")`` = ``units-whisper-tiny-l3-km500``, is
this pipeline on Whisper tiny.en layer 3 (the layer with the most phone information,
``benchmarks/results/units_layers/``). Whisper runs in PyTorch (`speechtok.units.whisper`: its
CTranslate2, Hugging Face and OpenAI checkpoints, encoder and decoder, any layer).

Modules: `features` (the one feature layer: kind -> extractor table, `load_extractor`, extractors, `FeatureSpec`, the layer convention), `featstore` (on-disk
features), `kmeans` (training, torch assignment, safe files, pickle import), `segment` (syllable
segmenters + pooling), `tokenizer` (`UnitTokenizer`, `load_units_dir`), `api` (the pipeline),
`vocoder` (`UnitVocoder`: frame units -> speech, stored inside the tokenizer directory),
`vocoder_train` (`train_vocoder` on the codec training stack), `whisper` (Whisper in PyTorch), `configs/` (training configs).
Token transforms usable on any `Codes` live in `speechtok.dedup` and `speechtok.bpe`.
"""
