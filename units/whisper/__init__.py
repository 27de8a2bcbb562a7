"""Whisper in PyTorch: `model` (OpenAI-style `Whisper`, `WhisperDims`), `mel` (its log-mel),
`load` (`load_whisper` from CTranslate2 / Hugging Face / OpenAI checkpoints), `ct2` (the model.bin reader).

Nothing here needs ctranslate2 or transformers; import the submodules (this package imports none).
"""
