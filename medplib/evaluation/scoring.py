"""Text metrics, aggregation and plots for `medplib.evaluation.evaluate` (the official MedPLIB/LLaVA-Med scoring rules).

Closed answers: exact match after `normalize_answer`. Open answers: token F1/precision/recall and sentence
BLEU-4 (plus BLEU-1) on whitespace tokens, implemented here because nltk is not a dependency. BLEU uses
Chen & Cherry "method 1" smoothing (epsilon 0.1 for an n-gram order without matches), which is nltk's
`SmoothingFunction().method1`; the original calls nltk without smoothing, so any answer shorter than four
words scores ~0 there.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

_ARTICLES = {"a", "an", "the"}
# A period is punctuation unless it sits between digits (keeps "2.5"); every other non-word char goes.
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCT = re.compile(r"[^\w\s.]|_")


# ---------------------------------------------------------------------------------------------- text
def normalize_answer(text: str) -> str:
    """Lower-case, punctuation to spaces, drop articles (as LLaVA-Med's `normalize_word`), collapse spaces."""
    text = _PUNCT.sub(" ", str(text).lower())
    text = _PERIOD.sub(" ", text)
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def closed_match(pred: str, gt: str) -> bool:
    """Exact match of the normalised strings (the original's closed/yes-no rule)."""
    return normalize_answer(pred) == normalize_answer(gt)


def token_f1(pred: str, gt: str) -> tuple[float, float, float]:
    """(F1, precision, recall) of the normalised token multisets; 0 when either side is empty.

    Uses the multiset intersection (SQuAD style); the original counts a shared word with the candidate's
    multiplicity, which only differs when a word repeats.
    """
    p, g = normalize_answer(pred).split(), normalize_answer(gt).split()
    if not p or not g:
        return 0.0, 0.0, 0.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall), precision, recall


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(pred: str, gt: str, weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25), epsilon: float = 0.1) -> float:
    """Sentence BLEU of `pred` against one reference on normalised whitespace tokens (smoothed, see module doc)."""
    hyp, ref = normalize_answer(pred).split(), normalize_answer(gt).split()
    if not hyp or not ref:
        return 0.0
    log_sum = 0.0
    for n, w in enumerate(weights, start=1):
        if w == 0:
            continue
        h = _ngrams(hyp, n)
        matches = sum((h & _ngrams(ref, n)).values())
        total = max(sum(h.values()), 1)
        if n == 1 and matches == 0:
            return 0.0  # as nltk: no unigram match means BLEU 0 whatever the smoothing
        log_sum += w * math.log((matches if matches else epsilon) / total)
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1.0 - len(ref) / len(hyp))
    return bp * math.exp(log_sum)


def modality_of(path: str) -> str:
    """The official modality key: the file name's prefix before the first underscore, lower-cased."""
    return os.path.basename(str(path)).split("_")[0].lower()


# ---------------------------------------------------------------------------------------------- aggregates
def mean_or_none(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(sum(values) / len(values)) if values else None


def summarise_grounding(records: list[dict], key: str = "modality") -> dict[str, Any]:
    """Per-sample mIoU / mDice overall and grouped by `key` (modality or structure)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(r)
    def block(rs: list[dict]) -> dict[str, Any]:
        return {"n": len(rs), "miou": mean_or_none(r["iou"] for r in rs), "mdice": mean_or_none(r["dice"] for r in rs)}

    return {**block(records), f"per_{key}": {k: block(v) for k, v in sorted(groups.items())}}


BOX_METRICS = ("recall50", "acc25", "acc50", "acc75")


def summarise_boxes(records: list[dict], key: str = "modality") -> dict[str, Any]:
    """Box Recall@0.5 (BiRD) and Acc@0.25/0.5/0.75 with Hungarian matching (MedRegA), overall and per `key`,
    over the records that carry box scores."""
    rs = [r for r in records if "recall50" in r]
    groups: dict[str, list[dict]] = {}
    for r in rs:
        groups.setdefault(str(r.get(key)), []).append(r)

    def block(items: list[dict]) -> dict[str, Any]:
        return {"n": len(items), **{m: mean_or_none(r[m] for r in items) for m in BOX_METRICS}}

    return {**block(rs), f"per_{key}": {k: block(v) for k, v in sorted(groups.items())}}


def score_answer(pred: str, gt: str, closed: bool) -> dict[str, Any]:
    """Per-sample text scores: `correct` for closed answers, F1/precision/recall/BLEU for open ones."""
    if closed:
        return {"correct": closed_match(pred, gt)}
    f1, precision, recall = token_f1(pred, gt)
    return {"f1": f1, "precision": precision, "recall": recall, "bleu": bleu(pred, gt),
            "bleu1": bleu(pred, gt, weights=(1.0,))}


def summarise_qa(records: list[dict], key: str = "modality") -> dict[str, Any]:
    """Closed accuracy and open F1/BLEU means, overall and per `key`."""
    def block(rs: list[dict]) -> dict[str, Any]:
        closed = [r for r in rs if r["closed"]]
        opened = [r for r in rs if not r["closed"]]
        return {"n": len(rs),
                "closed": {"n": len(closed), "accuracy": mean_or_none(float(r["correct"]) for r in closed)},
                "open": {"n": len(opened), **{m: mean_or_none(r[m] for r in opened)
                                              for m in ("f1", "precision", "recall", "bleu", "bleu1")}}}

    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(r)
    return {**block(records), f"per_{key}": {k: block(v) for k, v in sorted(groups.items())}}


# ---------------------------------------------------------------------------------------------- training log
# medplib.training.trainer logs its loss terms bare ("ce", "bce", "dice") and validation metrics as "val_*".
_LOSS_TERMS = {"ce", "bce", "dice"}
_SKIP_KEYS = {"epoch", "stage_epoch", "start_ts", "ts", "time", "step", "iteration", "version", "best_metric_epoch"}


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def load_training_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Per-epoch rows of numbers from a trainer log, tolerating the shapes seen in practice.

    Accepts: a list of per-epoch dicts; JSON lines; a dict holding such a list under any key; a dict of
    equal-length number lists ({"loss": [...], ...}); or a single MONAI Label `train_stats.json` snapshot
    (nested dicts flattened to "train.metrics.x"). Every row gets an `epoch` (1-based position if absent);
    when epochs restart (our trainer counts per stage) they become the running position and the original
    is kept as `stage_epoch`.
    """
    text = Path(path).read_text()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows: list[dict] | None = None
    if isinstance(data, list):
        rows = [r for r in data if isinstance(r, dict)]
    elif isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        series = {k: v for k, v in data.items()
                  if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}
        if lists:
            rows = max(lists, key=len)
        elif series:
            n = max(len(v) for v in series.values())
            rows = [{k: v[i] for k, v in series.items() if i < len(v)} for i in range(n)]
        else:
            rows = [data]
    if not rows:
        raise ValueError(f"{path}: no per-epoch records found")
    out = []
    for i, row in enumerate(rows):
        flat = _flatten(row)
        epoch = row.get("epoch")
        flat["epoch"] = float(epoch) if isinstance(epoch, (int, float)) else float(i + 1)
        out.append(flat)
    epochs = [r["epoch"] for r in out]
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        for i, r in enumerate(out):
            r["stage_epoch"], r["epoch"] = r["epoch"], float(i + 1)
    return out


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_bars(values: dict[str, float | None], path: str | os.PathLike, title: str, ylabel: str = "Dice",
              counts: dict[str, int] | None = None) -> Path:
    """A bar chart in [0, 1] with the value (and n) written above each bar."""
    plt = _pyplot()
    names = list(values) or ["(none)"]
    heights = [float(values.get(n) or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
    bars = ax.bar(names, heights, color="#4c72b0")
    for bar, name, h in zip(bars, names, heights):
        label = f"{h:.3f}" + (f"\nn={counts[name]}" if counts and name in counts else "")
        ax.text(bar.get_x() + bar.get_width() / 2, h + 0.01, label, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_training_curves(rows: list[dict[str, float]], path: str | os.PathLike) -> Path:
    """Losses on the left, every other metric on the right, against epoch."""
    plt = _pyplot()
    keys = sorted({k for r in rows for k in r if k not in _SKIP_KEYS and not k.endswith(("_ts", "_n"))})
    losses = [k for k in keys if "loss" in k.lower() or k in _LOSS_TERMS]
    others = [k for k in keys if k not in losses]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, group, title in ((axes[0], losses, "loss"), (axes[1], others, "metrics")):
        for k in group:
            pts = [(r["epoch"], r[k]) for r in rows if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if group:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
