"""The quantizer-collapse benchmark runs end to end on tiny synthetic features and a tiny manifest."""
import json

import numpy as np
import soundfile as sf
import torch

from speechtok.benchmarks import quantizer_collapse as qc


def test_run_variant_reports_usage_and_error():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(32, 6, generator=g) * 3
    train = centres[torch.randint(0, 32, (3000,), generator=g)] + 0.1 * torch.randn(3000, 6, generator=g)
    dev = centres[torch.randint(0, 32, (1000,), generator=g)] + 0.1 * torch.randn(1000, 6, generator=g)
    feats = qc.FeatureSet("toy", train, dev, utterances=1)
    rows = {v.name: qc.run_variant(feats, 32, v, qc.Settings(steps=10, batch=256)) for v in qc.VARIANTS}
    for row in rows.values():
        assert 0 < row["used_pct"] <= 100 and 1 <= row["perplexity"] <= 32 and row["rel_err"] >= 0
    # On 32 clear clusters k-means init finds (nearly) all of them; random init does not.
    assert rows["k-means init only"]["rel_err"] < rows["none (EMA, random init)"]["rel_err"]
    table = qc.to_markdown(list(rows.values()), "cmd --x", "info")
    assert table.count("\n| toy (6-d) | 32 |") == len(qc.VARIANTS) and "cmd --x" in table


def test_main_reads_a_manifest_and_writes_the_table(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * rng.standard_normal(8000)).astype("float32"), 8000)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav"}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "res.md"
    code = qc.main(["--data", str(tmp_path / "manifest.jsonl"), "--sizes", "8", "--variants", "0", "5",
                    "--steps", "3", "--batch", "64", "--features", "mfcc", "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "python -m speechtok.benchmarks.quantizer_collapse --data" in text
    assert text.count("| mfcc (20-d) | 8 |") == 2
