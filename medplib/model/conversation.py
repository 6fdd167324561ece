"""The llava_v1 conversation template, prompt builders and tokenisation with image/region placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Placeholder ids spliced out before the LLM sees the sequence (same values as the original).
IMAGE_TOKEN_INDEX = -200
REGION_TOKEN_INDEX = -300
IGNORE_INDEX = -100

SEG_TOKEN = "<SEG>"
REGION_START, REGION_END = "<region>", "</region>"
IM_START, IM_END = "<im_start>", "<im_end>"
IMAGE_PLACEHOLDER = "<image>"
REGION_PLACEHOLDER = REGION_START + REGION_END

# Added in exactly this order by the original training script, so ids match the official tokenizer
# (`<SEG>` = 32000 on the 32000-token LLaMA vocabulary).
SPECIAL_TOKENS: list[str] = (
    ["<SEG>", "<ref>", "</ref>", "<region>", "</region>", "<sr>", "</sr>", "<mask>", "</mask>"]
    + [f"<gen_{i}>" for i in range(1, 257)]
    + [IM_START, IM_END]
)

GROUND_TEMPLATES = (
    "Please segment the {label}.",
    "Can you segment the {label} in this image?",
    "Where is the {label}? Please output the segmentation mask.",
    "Segment the {label}.",
)
GROUND_ANSWER = "Sure, it is <SEG>."
# Words that make a question a segmentation request (the app's "auto" task uses this).
_GROUND_RE = re.compile(r"\b(segment|segmentation|delineate|outline|mask|contour|ground)\w*\b", re.IGNORECASE)
_REGION_MARKER_RE = re.compile(r"<region>(?:</region>)?")


@dataclass(frozen=True)
class Turn:
    """One question/answer exchange; `answer` is None for the turn being asked."""

    question: str
    answer: str | None = None


def is_grounding_request(text: str) -> bool:
    """True when the text asks for a segmentation (used to route `task=auto`)."""
    return bool(_GROUND_RE.search(text))


def grounding_question(label: str, template: int = 0) -> str:
    """The canonical grounding question for a structure name."""
    return GROUND_TEMPLATES[template % len(GROUND_TEMPLATES)].format(label=label.strip())


def with_region_markers(question: str, n_regions: int) -> str:
    """Normalise `<region>` markers to `<region></region>` and append missing ones (one per region).

    The original appends the marker at the end of the question when the user omits it.
    """
    found = len(_REGION_MARKER_RE.findall(question))
    if found > n_regions:
        raise ValueError(f"question has {found} <region> markers but only {n_regions} region prompt(s) were given")
    question = _REGION_MARKER_RE.sub(REGION_PLACEHOLDER, question)
    if found < n_regions:
        question = question.rstrip() + " " + " ".join([REGION_PLACEHOLDER] * (n_regions - found))
    return question


def render_turn(turn: Turn, first: bool) -> str:
    """One llava_v1 human turn (`SeparatorStyle.TWO`); the image goes first in the first human turn."""
    question = turn.question.replace(IMAGE_PLACEHOLDER, "").strip()
    if first:
        question = f"{IM_START}{IMAGE_PLACEHOLDER}{IM_END}\n{question}"
    return f" USER: {question} ASSISTANT:"


def _tokenize_text(tokenizer, text: str) -> list[int]:
    """Tokenise with `<image>` -> IMAGE_TOKEN_INDEX and `<region></region>` -> region ids around REGION_TOKEN_INDEX."""
    region_start = tokenizer.convert_tokens_to_ids(REGION_START)
    region_end = tokenizer.convert_tokens_to_ids(REGION_END)
    ids: list[int] = []
    for piece in re.split(r"(<image>|<region></region>)", text):
        if piece == IMAGE_PLACEHOLDER:
            ids.append(IMAGE_TOKEN_INDEX)
        elif piece == REGION_PLACEHOLDER:
            ids.extend([region_start, REGION_TOKEN_INDEX, region_end])
        elif piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


class OriginalEncoding:
    """How the original encodes text: transformers 4.31's slow LLaMA tokenizer, which the release trained with.

    4.31 splits the text on added and special tokens and strips the whitespace on *both* sides of every token
    added as a plain string (all of MedPLIB's: `<SEG>`, `<region>`, `<im_start>`, ...); `<s>`, `</s>` and `<unk>`
    are split off too but strip nothing (they are `AddedToken`s with lstrip = rstrip = False). Each text piece
    between them is SentencePiece-encoded on its own, so it gets the dummy-prefix `▁`. Transformers 5 keeps the
    whitespace instead, which changes 2-4 ids of every prompt.
    """

    def __init__(self, tokenizer, model_file: str):
        import sentencepiece as spm  # the official tokenizer's own dependency; other presets never load it

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos = tokenizer.bos_token_id
        self.stripping = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.plain = {t: tokenizer.convert_tokens_to_ids(t)
                      for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) if t}
        tokens = sorted({*self.stripping, *self.plain}, key=len, reverse=True)  # longest match first, as a trie
        self._split = re.compile("(" + "|".join(map(re.escape, tokens)) + ")")

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without BOS (4.31's `tokenize` + `convert_tokens_to_ids`)."""
        parts = self._split.split(text)  # odd positions hold the tokens
        for i in range(1, len(parts), 2):
            if parts[i] in self.stripping:
                parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.stripping.get(part, self.plain.get(part)))
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """The original's `tokenizer_image_token`: BOS, `<image>` -> IMAGE_TOKEN_INDEX, and REGION_TOKEN_INDEX
        inserted between each adjacent `<region>` `</region>` pair."""
        ids = [self.bos]
        for k, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(self.encode(chunk))
        start, end = self.stripping[REGION_START], self.stripping[REGION_END]
        out: list[int] = []
        for i, tok in enumerate(ids):
            out.append(tok)
            if tok == start and i + 1 < len(ids) and ids[i + 1] == end:
                out.append(REGION_TOKEN_INDEX)
        return out


def original_encoding(tokenizer) -> OriginalEncoding | None:
    """The 4.31 encoding for a SentencePiece LLaMA tokenizer (the official preset), else None.

    Other tokenizers (the small preset's GGUF BPE, the byte tokenizer) are fast tokenizers, for which 4.31 does
    not strip either: they keep the project's own per-piece encoding, which their weights were trained with.
    """
    cached = getattr(tokenizer, "_medplib_original_encoding", None)
    if cached is not None:
        return cached or None
    model_file = getattr(tokenizer, "vocab_file", None)
    found = bool(model_file) and str(model_file).endswith(".model") and Path(model_file).is_file() \
        and type(tokenizer).__name__.startswith("LlamaTokenizer")
    encoding = OriginalEncoding(tokenizer, model_file) if found else False
    tokenizer._medplib_original_encoding = encoding
    return encoding or None


def original_prompt(system: str, turns: list[Turn], sep2: str = "</s>") -> str:
    """A conversation rendered as the original (`conv_llava_v1.get_prompt()`, SeparatorStyle.TWO).

    The first question gets `<im_start><image><im_end>\n` in front (`preprocess_multimodal`); answered turns end
    with `sep2`, the one being asked with `ASSISTANT:`.
    """
    text = system + " "
    for idx, turn in enumerate(turns):
        question = turn.question.replace(IMAGE_PLACEHOLDER, "").strip()
        if idx == 0:
            question = f"{IM_START}{IMAGE_PLACEHOLDER}{IM_END}\n{question}"
        text += f"USER: {question} "
        text += f"ASSISTANT: {turn.answer}{sep2}" if turn.answer else "ASSISTANT:"
    return text


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Ids of one answer and its end of sequence, exactly as they appear after `ASSISTANT:` in a conversation."""
    sep2 = tokenizer.eos_token or "</s>"
    encoding = original_encoding(tokenizer)
    if encoding is not None:  # SentencePiece never merges across the space before the answer
        return encoding.encode(f"{answer}{sep2}")
    return tokenizer.encode(f" {answer}{sep2}", add_special_tokens=False)


def build_input_ids(tokenizer, system: str, turns: list[Turn]) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX outside answers) of a conversation.

    The official tokenizer gets the original's ids exactly (`OriginalEncoding`). Other tokenizers tokenise the
    system prompt, each human turn and each answer separately, for training and inference alike, so the prompt
    the model is trained on is token-for-token the prompt it is asked with. A last turn without answer yields a
    generation prompt.
    """
    for turn in turns[:-1]:
        if turn.answer is None:
            raise ValueError("only the last turn may lack an answer")
    encoding = original_encoding(tokenizer)
    if encoding is not None:
        return _original_ids_and_labels(encoding, tokenizer, system, turns)
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids += tokenizer.encode(system, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(ids)
    for idx, turn in enumerate(turns):
        prompt = _tokenize_text(tokenizer, render_turn(turn, idx == 0))
        ids += prompt
        labels += [IGNORE_INDEX] * len(prompt)
        if turn.answer is not None:
            answer = answer_ids(tokenizer, turn.answer)
            ids += answer
            labels += answer
    return ids, labels


def _original_ids_and_labels(encoding: OriginalEncoding, tokenizer, system: str,
                             turns: list[Turn]) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation, and labels masked round by round as the original's `preprocess_v1`."""
    sep2 = tokenizer.eos_token or "</s>"
    text = original_prompt(system, turns, sep2)
    ids = encoding.prompt_ids(text)
    labels = [IGNORE_INDEX] * len(ids)
    if turns[-1].answer is None:
        return ids, labels
    sep, cur = " ASSISTANT: ", 1
    for part in text.split(sep2):
        if not part:
            break
        instruction, found, _ = part.partition(sep)
        if not found:
            raise ValueError(f"cannot find {sep!r} in a round of {text!r}")
        round_len = len(encoding.prompt_ids(part))  # its BOS stands for the round's </s>
        instruction_len = len(encoding.prompt_ids(instruction + sep)) - 2  # BOS and the trailing "▁"
        labels[cur + instruction_len: cur + round_len] = ids[cur + instruction_len: cur + round_len]
        cur += round_len
    if cur != len(ids):  # the original silently drops such a sample; a clear error is kinder
        raise ValueError(f"tokenization mismatch ({cur} vs {len(ids)} ids): an answer contains {sep!r} or {sep2!r}")
    return ids, labels
