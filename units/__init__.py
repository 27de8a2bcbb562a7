"""speechtok.units: speech units from SSL / Whisper / MFCC features with k-means.

Pipeline (Python; the CLI ``speechtok units ...`` wraps the same calls)::

    from speechtok.units.api import make_extractor, extract_to_store, train_unit_tokenizer
    ext = make_extractor("hubert", checkpoint="hf_hubert_dir", layer=6)   # or "wavlm", "whisper", "mfcc"
    store = extract_to_store("manifest.jsonl", ext, "feats/")              # safetensors shards + index.json
    tok = train_unit_tokenizer(store, ext, n_clusters=500, dedup=True)     # faiss on a bounded sample
    tok.save("hubert-l6-km500")                                            # speechtok.load("hubert-l6-km500")
    codes = tok.encode(wav, sample_rate=sr)                                # Codes [B, 1, T] (+ durations)
    train_vocoder("hubert-l6-km500", "vocoder.json", "runs/voc",           # codec TrainConfig schema
                  export_to="hubert-l6-km500-voc")                         # speechtok units train-vocoder
    speechtok.load("hubert-l6-km500-voc").decode(codes)                    # Waveform [B, 1, S]

Modules: `features` (extractors, `FeatureSpec`, the layer convention), `featstore` (on-disk
features), `kmeans` (training, torch assignment, safe files, pickle import), `segment` (syllable
segmenters + pooling), `tokenizer` (`UnitTokenizer`, `load_units_dir`), `api` (the pipeline),
`vocoder` (`UnitVocoder`: frame units -> speech, stored inside the tokenizer directory),
`vocoder_train` (`train_vocoder` on the codec training stack), `configs/` (training configs).
Token transforms usable on any `Codes` live in `speechtok.dedup` and `speechtok.bpe`.
"""
