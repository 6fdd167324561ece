"""The llava_v1 conversation template, prompt builders and tokenisation with image/region placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def build_input_ids(tokenizer, system: str, turns: list[Turn]) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX outside answers) of a conversation.

    The system prompt, each human turn and each answer are tokenised separately, for training and inference
    alike, so the prompt the model is trained on is token-for-token the prompt it is asked with. A last turn
    without answer yields a generation prompt.
    """
    sep2 = tokenizer.eos_token or "</s>"
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids += tokenizer.encode(system, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(ids)
    for idx, turn in enumerate(turns):
        prompt = _tokenize_text(tokenizer, render_turn(turn, idx == 0))
        ids += prompt
        labels += [IGNORE_INDEX] * len(prompt)
        if turn.answer is not None:
            answer = tokenizer.encode(f" {turn.answer}{sep2}", add_special_tokens=False)
            ids += answer
            labels += answer
        elif idx != len(turns) - 1:
            raise ValueError("only the last turn may lack an answer")
    return ids, labels
