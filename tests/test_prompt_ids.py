"""Prompt ids of the official (SentencePiece LLaMA) tokenizer equal the original's, as transformers 4.31 made them.

The expected ids come from an independent re-statement of the original pipeline written here, not from the code
under test: llava_v1 `get_prompt`, `tokenizer_image_token`, `preprocess_v1`'s round masking, and 4.31's slow
`PreTrainedTokenizer.tokenize` (split on added tokens, strip whitespace on both sides of tokens added as plain
strings, SentencePiece-encode each piece). That re-statement was itself checked against transformers 4.31.0 in a
throw-away venv with `bench/tokenizer_431.py` (docs/fidelity.md has the command and result).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from medplib.model.config import MedPLIBConfig, tiny_config
from medplib.model.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    REGION_TOKEN_INDEX,
    SPECIAL_TOKENS,
    Turn,
    answer_ids,
    build_input_ids,
    original_encoding,
)
from medplib.model.tokenizer import add_medplib_tokens, load_tokenizer, save_tokenizer

SYSTEM = MedPLIBConfig().system_prompt

CASES = [
    [("What modality is this?", None)],
    [("Please segment the liver.", "Sure, it is <SEG>.")],
    [("What is the structure in <region></region>?", None)],
    [("What is this? <region></region>", "It is the grey matter.")],
    [("What modality is this?", "It is an MR scan."), ("Please segment the brain.", "Sure, it is <SEG>."),
     ("Is it the white matter <region></region> ?", None)],
    [("  Segment the liver in this CT image.\n", "Sure, it is <SEG> and <SEG>.")],
    [("这是什么模态？", None)],
    [("<image>\nWhat modality is this?", "MR")],
    [("What modality is this?", "It is an MR scan."), ("Segment the brain <region></region>.", "Sure, it is <SEG>.")],
]


def train_llama_like_sentencepiece(folder: Path) -> Path:
    """A tiny BPE SentencePiece model with LLaMA's settings (identity normaliser, spaces kept, dummy prefix,
    byte fallback) in a folder laid out like the official checkpoint's tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join([
        "Please segment the liver in this CT image.", "What modality is this? It is an MR scan of the brain.",
        "A chat between a curious human and an artificial intelligence assistant.",
        "Sure, it is the grey matter and the white matter. USER: ASSISTANT:"] * 40))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True)
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>"}))
    return folder


class Reference431:
    """The original's pipeline under transformers 4.31, restated independently (see the module docstring)."""

    def __init__(self, model_file: Path, vocab: dict[str, int]):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.added = {t: vocab[t] for t in SPECIAL_TOKENS}  # added with add_tokens(str): strip both sides
        self.special = {"<s>": 1, "</s>": 2, "<unk>": 0}  # AddedToken(lstrip=False, rstrip=False): no strip

    def _split(self, text: str) -> list[str]:
        """4.31's Trie.split: scan left to right, cut at the longest no-split token starting at each place."""
        names = sorted([*self.added, *self.special], key=len, reverse=True)
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((n for n in names if text.startswith(n, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append(text[start:i])
            out.append(hit)
            i = start = i + len(hit)
        if start < len(text):
            out.append(text[start:])
        return out

    def tokenize_ids(self, text: str, bos: bool = True) -> list[int]:
        tokens = self._split(text)
        for i, tok in enumerate(tokens):
            if tok in self.added:
                if i + 1 < len(tokens):
                    tokens[i + 1] = tokens[i + 1].lstrip()
                if i > 0:
                    tokens[i - 1] = tokens[i - 1].rstrip()
        ids = [1] if bos else []
        for tok in tokens:
            if not tok:
                continue
            if tok in self.added or tok in self.special:
                ids.append(self.added.get(tok, self.special.get(tok)))
            else:
                ids.extend(self.sp.encode(tok))
        return ids

    def tokenizer_image_token(self, prompt: str) -> list[int]:
        chunks = [self.tokenize_ids(c) for c in prompt.split("<image>")]
        ids = [chunks[0][0]]
        for k, chunk in enumerate(chunks):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[1:])
        region_start, region_end = self.added["<region>"], self.added["</region>"]
        i = 0
        while i < len(ids) - 1:
            if ids[i] == region_start and ids[i + 1] == region_end:
                ids.insert(i + 1, REGION_TOKEN_INDEX)
                i += 1
            i += 1
        return ids

    @staticmethod
    def prompt(turns) -> str:
        messages = []
        for j, (question, answer) in enumerate(turns):
            if j == 0:
                question = ("<image>\n" + question.replace("<image>", "").strip()).strip()
                question = question.replace("<image>", "<im_start><image><im_end>")
            messages += [("USER", question), ("ASSISTANT", answer)]
        seps = [" ", "</s>"]
        text = SYSTEM + seps[0]
        for i, (role, message) in enumerate(messages):
            text += role + ": " + message + seps[i % 2] if message else role + ":"
        return text

    def ids_and_labels(self, turns) -> tuple[list[int], list[int]]:
        conversation = self.prompt(turns)
        ids = self.tokenizer_image_token(conversation)
        target = list(ids)
        sep, cur = " ASSISTANT: ", 1
        target[:cur] = [IGNORE_INDEX]
        for rou in conversation.split("</s>"):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(self.tokenizer_image_token(rou))
            instruction_len = len(self.tokenizer_image_token(parts[0])) - 2
            target[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        target[cur:] = [IGNORE_INDEX] * (len(target) - cur)
        if cur != len(ids):
            target = [IGNORE_INDEX] * len(ids)
        return ids, target


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = train_llama_like_sentencepiece(tmp_path_factory.mktemp("llama_tok"))
    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=False, legacy=True)
    add_medplib_tokens(tok)
    return folder, tok, Reference431(folder / "tokenizer.model", tok.get_vocab())


@pytest.mark.parametrize("case", range(len(CASES)))
def test_prompt_and_label_ids_equal_the_originals(llama, case):
    _, tok, ref = llama
    turns = CASES[case]
    ids, labels = build_input_ids(tok, SYSTEM, [Turn(q, a) for q, a in turns])
    want_ids, want_labels = ref.ids_and_labels(turns)
    assert ids == want_ids
    if turns[-1][1] is not None:
        assert labels == want_labels
        assert any(v != IGNORE_INDEX for v in labels)  # the reference's masking did not give up (mismatch)
    else:
        assert all(v == IGNORE_INDEX for v in labels)


def test_the_rule_changes_ids_transformers_5_would_produce(llama):
    """Without the 4.31 rule the prompt gains tokens (`▁` before `<im_start>`, `▁ <0x0A>` after `<im_end>`)."""
    _, tok, ref = llama
    prompt = Reference431.prompt([("What is this? <region></region>", None)])
    plain = [i for i in tok.encode(prompt.replace("<image>", ""), add_special_tokens=True)]
    want = [i for i in ref.tokenizer_image_token(prompt) if i >= 0]
    assert len(plain) > len(want)


def test_answer_ids_match_the_answer_inside_the_conversation(llama):
    _, tok, ref = llama
    ids, labels = build_input_ids(tok, SYSTEM, [Turn("Please segment the liver.", "Sure, it is <SEG>.")])
    assert [v for v in labels if v != IGNORE_INDEX] == answer_ids(tok, "Sure, it is <SEG>.")
    seg = tok.convert_tokens_to_ids("<SEG>")
    answer = answer_ids(tok, "Sure, it is <SEG>.")
    # 4.31 strips the space before <SEG>, and "." after it is a piece of its own with the dummy prefix
    assert answer[answer.index(seg) + 1:] == ref.sp.encode(".") + [tok.eos_token_id]


def test_saved_and_reloaded_llama_tokenizer_keeps_the_rule(llama, tmp_path):
    folder, tok, _ = llama
    cfg = tiny_config().llm
    cfg.tokenizer, cfg.path = "llama", str(folder)
    loaded = load_tokenizer(cfg)
    assert original_encoding(loaded) is not None
    save_tokenizer(loaded, tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()  # transformers 5 alone writes only tokenizer.json
    cfg.path = None
    again = load_tokenizer(cfg, folder=tmp_path)
    turns = [Turn(q, a) for q, a in CASES[4]]
    assert build_input_ids(again, SYSTEM, turns) == build_input_ids(tok, SYSTEM, turns)


def test_non_sentencepiece_tokenizers_keep_their_encoding():
    """The byte / GGUF BPE tokenizers are fast tokenizers: 4.31 strips nothing around their added tokens."""
    tok = load_tokenizer(tiny_config().llm)
    assert original_encoding(tok) is None
    ids, _ = build_input_ids(tok, SYSTEM, [Turn("What is this?", "MR")])
    assert ids[-len(answer_ids(tok, "MR")):] == tok.encode(" MR</s>", add_special_tokens=False)
