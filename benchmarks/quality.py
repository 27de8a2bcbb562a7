"""Model-based speech quality metrics: speaker similarity, DNSMOS, ViSQOL (speech mode) and F0.

Every metric has the shape ``fn(reference, estimate, sample_rate) -> float | dict[str, float]``:
``reference`` is the original, ``estimate`` the resynthesis, both float ``[S]`` (or ``[C, S]``,
channels averaged) at ``sample_rate`` Hz, cut to the shorter length as `metrics._pair` does and
resampled internally to the rate the model needs (16 kHz for all four). `QUALITY_METRICS` lists them
with their output keys, direction and backend so a runner can iterate it; `available` says whether a
metric's backend imports.

Models load lazily, once per process (module-level caches keyed by model and device). A missing
backend raises `ImportError` naming the package and the ``speechtok[bench]`` extra. Nothing heavy is
imported at module level.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace
from typing import Optional
from typing import Callable, Union

import torch

from .metrics import _pair

MODEL_SR = 16000
_CACHE: dict[tuple, object] = {}
# pip distribution -> modules it must import (what `available` and the error messages name)
_BACKENDS = {
    "resemblyzer": ("resemblyzer",),
    "speechmos": ("speechmos.dnsmos", "onnxruntime"),
    "visqol-python[lattice]": ("visqol.api", "ai_edge_litert"),
    "librosa": ("librosa",),
    "transformers": ("transformers",),
}


def _require(package: str, what: str) -> None:
    """Import the modules of `package` (a key of `_BACKENDS`) or raise an `ImportError` naming it."""
    import importlib

    for module in _BACKENDS[package]:
        try:
            with warnings.catch_warnings():  # webrtcvad (under resemblyzer) warns on pkg_resources
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"{what} needs {package} (module {module!r} did not import: {e}): "
                              f"pip install '{package}' or pip install 'speechtok[bench]'") from e


def _mono16k(x: torch.Tensor, sample_rate: int):
    """float32 numpy ``[S']`` at 16 kHz from a float ``[S]`` tensor at `sample_rate`."""
    x = x.detach().double().cpu()
    if sample_rate != MODEL_SR:
        import torchaudio.functional as AF

        x = AF.resample(x.float(), sample_rate, MODEL_SR).double()
    return x.float().numpy()


def _pair16k(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int):
    r, e = _pair(reference, estimate)
    return _mono16k(r, sample_rate), _mono16k(e, sample_rate)


def _device(device: Union[str, torch.device, None]) -> str:
    return str(torch.device(device)) if device is not None else "cpu"


# ------------------------------------------------------------------------------ speaker similarity
def _resemblyzer(device: str):
    key = ("resemblyzer", device)
    if key not in _CACHE:
        _require("resemblyzer", "speaker similarity (Resemblyzer)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder
        _CACHE[key] = VoiceEncoder(device=device, verbose=False)  # GE2E weights ship in the wheel
    return _CACHE[key]


def _wavlm_sv(path: str, device: str):
    key = ("wavlm-sv", path, device)
    if key not in _CACHE:
        _require("transformers", "speaker similarity (WavLM-SV)")
        from pathlib import Path

        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WavLMForXVector

        if not Path(path).is_dir():
            raise FileNotFoundError(f"wavlm-sv: {path!r} is not a Hugging Face model directory")
        model = WavLMForXVector.from_pretrained(path).to(device).eval()
        if (Path(path) / "preprocessor_config.json").is_file():
            extractor = AutoFeatureExtractor.from_pretrained(path)
        else:  # a bare model directory: the extractor's defaults (16 kHz, zero-mean unit-variance)
            extractor = Wav2Vec2FeatureExtractor(sampling_rate=MODEL_SR, do_normalize=True)
        _CACHE[key] = (model, extractor)
    return _CACHE[key]


def speaker_embedding(audio: torch.Tensor, sample_rate: int, model: str = "resemblyzer",
                      device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Unit-norm speaker embedding of float ``[S]`` audio: ``[256]`` for Resemblyzer (GE2E d-vector
    of the volume-normalised, VAD-trimmed utterance), ``[xvector_output_dim]`` for
    ``model="wavlm-sv:<dir>"`` (a Hugging Face `WavLMForXVector` directory, e.g. a local copy of
    microsoft/wavlm-base-plus-sv)."""
    dev = _device(device)
    x = audio.detach()
    if x.dim() == 2:
        x = x.mean(0)
    wav = _mono16k(x, sample_rate)
    if model == "resemblyzer":
        encoder = _resemblyzer(dev)
        from resemblyzer import preprocess_wav

        trimmed = preprocess_wav(wav, source_sr=MODEL_SR)
        emb = torch.from_numpy(encoder.embed_utterance(trimmed if trimmed.size else wav))
    elif model.startswith("wavlm-sv:"):
        net, extractor = _wavlm_sv(model[len("wavlm-sv:"):], dev)
        inputs = extractor(wav, sampling_rate=MODEL_SR, return_tensors="pt")
        with torch.inference_mode():
            emb = net(input_values=inputs["input_values"].to(dev)).embeddings[0].float().cpu()
    else:
        raise ValueError(f"unknown speaker model {model!r}: 'resemblyzer' or 'wavlm-sv:<dir>'")
    return torch.nn.functional.normalize(emb.float(), dim=0)


def speaker_similarity(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int,
                       model: str = "resemblyzer", device: Union[str, torch.device, None] = None) -> float:
    """Cosine similarity in [-1, 1] of the speaker embeddings (`speaker_embedding`) of the two
    signals (cut to the shorter length); 1 for identical audio, higher is the same voice."""
    r, e = _pair(reference, estimate)
    er = speaker_embedding(r, sample_rate, model, device)
    ee = speaker_embedding(e, sample_rate, model, device)
    return float((er @ ee).clamp(-1.0, 1.0))


# ---------------------------------------------------------------------------------------- DNSMOS
def _dnsmos_model(device: str):
    key = ("dnsmos", device)
    if key not in _CACHE:
        _require("speechmos", "DNSMOS")
        import os

        import onnxruntime as ort
        from speechmos import dnsmos as D

        root = os.path.dirname(os.path.abspath(D.__file__))
        primary = os.path.join(root, "dnsmos_models", "sig_bak_ovr.onnx")
        p808 = os.path.join(root, "dnsmos_models", "model_v8.onnx")
        model = D.DNSMOS(primary, p808)  # CPU sessions
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            model.onnx_sess = ort.InferenceSession(primary, providers=providers)
            model.p808_onnx_sess = ort.InferenceSession(p808, providers=providers)
        _CACHE[key] = model
    return _CACHE[key]


def dnsmos(audio: torch.Tensor, sample_rate: int, device: Union[str, torch.device, None] = None) -> dict[str, float]:
    """Non-intrusive DNSMOS P.835 (Reddy et al. 2022; Microsoft's ONNX models as shipped by
    `speechmos`) of float ``[S]`` audio: ``{"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}``, MOS in
    [1, 5] for speech signal, background noise and overall quality. The model sees 9.01 s windows
    at 16 kHz (1 s hop, averaged); shorter audio is tiled to 9.01 s as in Microsoft's script.
    Samples are clipped to [-1, 1]."""
    import numpy as np

    x = audio.detach()
    if x.dim() == 2:
        x = x.mean(0)
    if x.numel() == 0:
        raise ValueError("cannot score empty audio")
    wav = np.clip(_mono16k(x, sample_rate), -1.0, 1.0)
    out = _dnsmos_model(_device(device))(wav, MODEL_SR, False)
    return {"dnsmos_sig": float(out["sig_mos"]), "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_ovrl": float(out["ovrl_mos"])}


def dnsmos_metric(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int,
                  device: Union[str, torch.device, None] = None) -> dict[str, float]:
    """`dnsmos` of the estimate (cut to the paired length); the reference is not used in the score
    (score it with `dnsmos` to report the original's beside it)."""
    _, e = _pair(reference, estimate)
    return dnsmos(e, sample_rate, device)


# ---------------------------------------------------------------------------------------- ViSQOL
def _visqol_api(mapper: str):
    key = ("visqol", mapper)
    if key not in _CACHE:
        if mapper not in ("lattice", "polynomial"):
            raise ValueError(f"ViSQOL mapper must be 'lattice' or 'polynomial', got {mapper!r}")
        if mapper == "lattice":
            _require("visqol-python[lattice]", "ViSQOL")
        else:
            try:
                import visqol.api  # noqa: F401
            except ImportError as e:
                raise ImportError("ViSQOL needs visqol-python: pip install 'speechtok[bench]'") from e
        from visqol.api import VisqolApi

        api = VisqolApi()
        api.create(mode="speech", use_lattice_model=mapper == "lattice")
        _CACHE[key] = api
    return _CACHE[key]


def visqol(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int, mapper: str = "lattice") -> float:
    """ViSQOL v3 speech mode (Chinen et al. 2020; the `visqol-python` port) at 16 kHz: MOS-LQO in
    [1, 5], higher is better. ``mapper="lattice"`` is the C++ tool's default speech mapping (its
    TFLite deep-lattice model; identical audio scores ~4.5, its ceiling); ``"polynomial"`` is the
    older scaled mapping (identical audio scores 5.0). Scores from the two are not comparable."""
    r, e = _pair16k(reference, estimate, sample_rate)
    api = _visqol_api(mapper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(api.measure_from_arrays(r.astype("float64"), e.astype("float64"), MODEL_SR).moslqo)


# -------------------------------------------------------------------------------------------- F0
F0_FMIN, F0_FMAX, F0_FRAME, F0_HOP = 50.0, 600.0, 1024, 160  # Hz, Hz, samples and hop at 16 kHz


def f0_track(audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pYIN (Mauch & Dixon 2014; librosa) F0 of float ``[S]`` audio at 16 kHz, 64 ms frames, 10 ms
    hop, 50-600 Hz: ``(f0_hz [T] float64, voiced [T] bool)`` with ``f0_hz`` NaN where unvoiced."""
    _require("librosa", "F0 metrics (pYIN)")
    import librosa

    x = audio.detach()
    if x.dim() == 2:
        x = x.mean(0)
    f0, voiced, _ = librosa.pyin(_mono16k(x, sample_rate).astype("float64"), fmin=F0_FMIN, fmax=F0_FMAX,
                                 sr=MODEL_SR, frame_length=F0_FRAME, hop_length=F0_HOP)
    return torch.from_numpy(f0), torch.from_numpy(voiced)


def f0_metrics(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """F0 agreement of the estimate with the reference (pYIN tracks, `f0_track`):

    - ``f0_rmse_cents``: RMS of ``1200 log2(f0_est / f0_ref)`` over frames voiced in both
      (0 for identical audio; a +200-cent pitch shift gives ~200), lower is better;
    - ``f0_corr``: Pearson correlation of F0 in Hz over those frames (1 for identical audio; a
      constant pitch shift keeps it ~1), higher is better;
    - ``voicing_error``: fraction of all frames whose voiced/unvoiced decisions differ (0 for
      identical audio), lower is better.

    RMSE and correlation are NaN when fewer than 2 frames are voiced in both.
    """
    r, e = _pair(reference, estimate)
    f_r, v_r = f0_track(r, sample_rate)
    f_e, v_e = f0_track(e, sample_rate)
    n = min(v_r.numel(), v_e.numel())
    f_r, v_r, f_e, v_e = f_r[:n], v_r[:n], f_e[:n], v_e[:n]
    both = v_r & v_e & torch.isfinite(f_r) & torch.isfinite(f_e)
    voicing = float((v_r != v_e).double().mean()) if n else math.nan
    if int(both.sum()) < 2:
        return {"f0_rmse_cents": math.nan, "f0_corr": math.nan, "voicing_error": voicing}
    a, b = f_r[both], f_e[both]
    cents = 1200.0 * torch.log2(b / a)
    rmse = float(cents.pow(2).mean().sqrt())
    a0, b0 = a - a.mean(), b - b.mean()
    den = float(a0.norm() * b0.norm())
    corr = float(a0 @ b0) / den if den > 0 else (1.0 if torch.equal(a, b) else math.nan)
    return {"f0_rmse_cents": rmse, "f0_corr": corr, "voicing_error": voicing}


# ----------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class MetricSpec:
    """One quality metric for a runner to iterate.

    Attributes:
        name: metric name (the `QUALITY_METRICS` key).
        fn: ``fn(reference [S], estimate [S], sample_rate) -> float | dict[str, float]``.
        keys: output names; a float result is reported as ``keys[0]``, a dict has exactly these keys.
        higher_is_better: one bool for all keys, or a dict key -> bool.
        unit: what the numbers are, for tables.
        needs_reference: False where the score is of the estimate alone (DNSMOS).
        requires: the pip package that provides the backend (all are in ``speechtok[bench]``).
    """

    name: str
    fn: Callable[..., Union[float, dict]]
    keys: tuple[str, ...]
    higher_is_better: Union[bool, dict]
    unit: str
    needs_reference: bool
    requires: str

    def better(self, key: str) -> bool:
        """Whether a higher value of output `key` is better."""
        h = self.higher_is_better
        return bool(h[key]) if isinstance(h, dict) else bool(h)


QUALITY_METRICS: dict[str, MetricSpec] = {
    "speaker_similarity": MetricSpec("speaker_similarity", speaker_similarity, ("speaker_similarity",), True,
                                     "cosine (Resemblyzer GE2E)", True, "resemblyzer"),
    "dnsmos": MetricSpec("dnsmos", dnsmos_metric, ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"), True,
                         "MOS 1-5 (DNSMOS P.835)", False, "speechmos"),
    "visqol": MetricSpec("visqol", visqol, ("visqol",), True, "MOS-LQO 1-5 (ViSQOL v3 speech, lattice)", True,
                         "visqol-python[lattice]"),
    "f0": MetricSpec("f0", f0_metrics, ("f0_rmse_cents", "f0_corr", "voicing_error"),
                     {"f0_rmse_cents": False, "f0_corr": True, "voicing_error": False},
                     "cents / Pearson r / fraction of frames (pYIN)", True, "librosa"),
}


def metric_spec(name: str) -> Optional[MetricSpec]:
    """The spec of metric ``name``: a `QUALITY_METRICS` key, or ``speaker_similarity:MODEL`` with
    MODEL as `speaker_embedding` takes it (``speaker_similarity:wavlm-sv:/path/to/wavlm-base-plus-sv``
    scores with a WavLM speaker-verification checkpoint, as the Llasa/X-Codec2 table does).
    None for an unknown name."""
    base, _, model = name.partition(":")
    spec = QUALITY_METRICS.get(base)
    if spec is None or not model:
        return spec if not model else None
    if base != "speaker_similarity" or not (model == "resemblyzer" or model.startswith("wavlm-sv:")):
        return None
    return replace(spec, fn=functools.partial(speaker_similarity, model=model), unit=f"cosine ({model})",
                   requires="transformers" if model.startswith("wavlm-sv:") else spec.requires)


def available(name: str) -> bool:
    """Whether the backend of quality metric `name` imports (False: skip it, naming `requires`)."""
    spec = metric_spec(name)
    if spec is None:
        return False
    try:
        _require(spec.requires, name)
    except ImportError:
        return False
    return True
