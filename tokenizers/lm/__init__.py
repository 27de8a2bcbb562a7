"""The downstream LM layer: `Codes` <-> LM token ids, and everything an LM trainer and sampler needs.

    layout.py     `TokenLayout` (vocabulary and pattern; saved with the data it made), `LMTokens`, masks
    sampling.py   constrained sampling (`LayoutState`, `allowed_next`, `LayoutLogitsProcessor` for
                  ``transformers``' ``generate``) and `decode_lenient` for unfinished or corrupted samples
    windows.py    fixed-length training windows cut on frame boundaries, with their masks
    words.py      word timestamps (manifest ``words``, Whisper via faster-whisper) and word -> token cuts
    interleave.py word-level speech-text interleaving (SpiRit-LM / GLM-4-Voice) and its inverse `split`
    interleave_sampling.py  the interleaved grammar for constrained generation
"""
from .layout import (IGNORE_INDEX, LAYOUT_FORMAT, LAYOUT_FORMAT_VERSION, SPECIALS, LayoutError, LMTokens,
                     TokenLayout, flatten)
from .sampling import LayoutLogitsProcessor, LayoutState, Repair, allowed_next, decode_lenient, logits_processor
from .windows import LMWindows, make_windows, window_codes
from .words import WhisperWords, Word, WordsError, words_from_row
from .interleave import InterleaveError, Interleaver, InterleaveSpec
from .interleave_sampling import InterleaveLogitsProcessor, InterleaveState, interleave_logits_processor

__all__ = ["IGNORE_INDEX", "LAYOUT_FORMAT", "LAYOUT_FORMAT_VERSION", "SPECIALS", "LayoutError", "LMTokens",
           "TokenLayout", "flatten", "LayoutLogitsProcessor", "LayoutState", "Repair", "allowed_next",
           "decode_lenient", "logits_processor", "LMWindows", "make_windows", "window_codes",
           "WhisperWords", "Word", "WordsError", "words_from_row", "InterleaveError", "Interleaver", "InterleaveSpec",
           "InterleaveLogitsProcessor", "InterleaveState", "interleave_logits_processor"]
