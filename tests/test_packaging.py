"""The wheel holds every subpackage, maps the folders into `speechtok`, and installs no top-level
`tokenizers` (Hugging Face's) or `cli`. Every module imports from the built wheel."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, cwd=out)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("speechtok-*.whl")
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"speechtok"}, tops
    source_pkgs = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("*/**/__init__.py")
                   if p.parts[len(ROOT.parts)] in ("tokenizers", "codec", "units", "cli", "benchmarks")}
    roots = {"tokenizers": "speechtok", "codec": "speechtok/codec", "units": "speechtok/units",
             "cli": "speechtok/cli", "benchmarks": "speechtok/benchmarks"}
    for pkg in source_pkgs:
        top, _, rest = pkg.partition("/")
        dest = roots[top] + ("/" + rest if rest else "") + "/__init__.py"
        assert dest in names, f"{pkg} is missing from the wheel ({dest})"
    assert "speechtok/data/sample_ljspeech.flac" in names
    assert "speechtok/models/mulaw-16k/config.json" in names
    # the packaged benchmark set: manifest, card, and every file the manifest names
    mini = "speechtok/benchmarks/data/bench-mini/"
    assert {mini + "manifest.jsonl", mini + "README.md"} <= set(names)
    recs = [json.loads(x) for x in (ROOT / "benchmarks/data/bench-mini/manifest.jsonl").read_text().splitlines() if x]
    missing = [mini + r[k] for r in recs for k in ("audio", "phones") if mini + r[k] not in names]
    assert recs and not missing, missing[:3]
    assert not any(n.startswith(mini) and n.endswith(".py") for n in names)  # its build script stays in the repo
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "speechtok = speechtok.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_every_module_imports_from_the_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import importlib, pkgutil, sys, speechtok\n"
        f"assert speechtok.__file__.startswith({str(tmp_path)!r}), speechtok.__file__\n"
        "import tokenizers; assert hasattr(tokenizers, 'Tokenizer'), 'HF tokenizers is shadowed'\n"
        "bad = []\n"
        "for m in pkgutil.walk_packages(speechtok.__path__, 'speechtok.'):\n"
        "    try: importlib.import_module(m.name)\n"
        "    except Exception as e: bad.append(f'{m.name}: {e!r}')\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]


def test_packaged_bench_set_loads_from_the_wheel(wheel, tmp_path):
    """`speechtok bench`'s default data comes from the installed package, with no shared folder."""
    zipfile.ZipFile(wheel).extractall(tmp_path)
    (tmp_path / "empty").mkdir()
    code = (
        "from speechtok.benchmarks.runner import BenchConfig, select_utterances\n"
        "from speechtok.benchmarks.suite import resolve_data\n"
        "path, suite = resolve_data(None)\n"
        f"assert path.startswith({str(tmp_path)!r}) and suite.name == 'bench-mini', path\n"
        "utts = select_utterances(path, BenchConfig(max_items=None), suite)\n"
        "assert len(utts) >= 16 and all(u.text and u.audio.numel() > 16000 for u in utts)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "SPEECHTOK_SHARED": str(tmp_path / "empty")})
    assert r.returncode == 0, r.stderr[-3000:]
