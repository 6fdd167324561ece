"""Chinese prompts (MedRegA is English/Chinese): templates, a small anatomy glossary, and intent recognition.

The glossary maps English structure names to their usual Chinese terms, so a label called "white matter" is asked
for as 白质 and a region marked on it is answered as 白质 in a Chinese conversation. Names missing from the
glossary stay in English inside the Chinese sentence, which is how mixed-language clinical notes read anyway.
"""

from __future__ import annotations

import re
from typing import Callable

ZH_NAMES: dict[str, str] = {
    "brain": "脑", "grey matter": "灰质", "gray matter": "灰质", "white matter": "白质", "csf": "脑脊液",
    "cerebrospinal fluid": "脑脊液", "ventricle": "脑室", "skull": "颅骨", "liver": "肝脏", "spleen": "脾脏",
    "kidney": "肾脏", "left kidney": "左肾", "right kidney": "右肾", "lung": "肺", "left lung": "左肺",
    "right lung": "右肺", "heart": "心脏", "pancreas": "胰腺", "stomach": "胃", "gallbladder": "胆囊",
    "bladder": "膀胱", "prostate": "前列腺", "aorta": "主动脉", "bone": "骨", "spine": "脊柱", "tumor": "肿瘤",
    "tumour": "肿瘤", "lesion": "病灶", "nodule": "结节", "body": "身体", "background": "背景",
}
GROUND_TEMPLATES_ZH = ("请分割{label}。", "请在这张图像中分割出{label}。", "{label}在哪里？请输出分割掩码。", "分割{label}。")
GROUND_ANSWER_ZH = "好的，分割结果是<SEG>。"
REGION_QUESTIONS_ZH = ("这是什么结构？", "<region>标记的是什么结构？", "<region>显示的是什么？")

_ZH_LOOKUPS: list[Callable[[str], str | None]] = []  # more glossaries (the brain vocabulary of medplib.data)
_CJK_RE = re.compile(r"[\u3400-\u9fff]")
_GROUND_ZH_RE = re.compile(r"(分割|勾画|勾勒|圈出|标出|描绘|掩码|轮廓)")


def is_chinese(text: str) -> bool:
    return bool(_CJK_RE.search(text))


def to_zh(name: str) -> str:
    """The Chinese term for an English structure name (the name itself when no glossary has it).

    The glossary above comes first; then lookups registered by higher layers (`medplib.data.vocabulary` registers
    its ~200 brain structures on import: "left hippocampus" -> 左侧海马).
    """
    key = name.strip()
    if key.lower() in ZH_NAMES:
        return ZH_NAMES[key.lower()]
    for lookup in _ZH_LOOKUPS:
        zh = lookup(key)
        if zh:
            return zh
    return key


def register_zh_lookup(lookup: Callable[[str], str | None]) -> None:
    """Add a name -> Chinese lookup that `to_zh` consults after its own glossary (once per function)."""
    if lookup not in _ZH_LOOKUPS:
        _ZH_LOOKUPS.append(lookup)


def is_grounding_request_zh(text: str) -> bool:
    return bool(_GROUND_ZH_RE.search(text))
