"""The long-file benchmark runs and reports what it measured (a file crossing one 30 s block)."""
from speechtok.benchmarks.long_files import main


def test_long_files_benchmark_reports_exact_codes(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["--minutes", "0.6", "--rates", "16000", "-o", str(out)]) == 0
    text = out.read_text()
    row = [ln for ln in text.splitlines() if ln.startswith("| 16000 |")]
    assert row and row[0].split("|")[2:4] == [" 1800 ", " 0 "], text  # 36 s at 50 Hz, none differ
    assert "python -m speechtok.benchmarks.long_files --minutes 0.6" in text
