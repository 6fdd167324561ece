"""Check prompt ids against transformers 4.31 itself (the version the original trains and evaluates with).

transformers 4.31 cannot live in the project's venv, so it runs in a throw-away one:

    python3 -m venv /tmp/tf431
    /tmp/tf431/bin/pip install --no-deps transformers==4.31.0
    /tmp/tf431/bin/pip install tokenizers==0.13.3 sentencepiece 'numpy<2' packaging pyyaml regex filelock \
        'huggingface_hub<0.20' requests tqdm safetensors
    .venv/bin/python bench/tokenizer_431.py --python /tmp/tf431/bin/python

It trains the LLaMA-like SentencePiece model of tests/test_prompt_ids.py, has 4.31 load it slow + legacy and add
MedPLIB's tokens as `train_ds_medplib.py` does, builds each test case's prompt and labels the original's way, and
compares them with the project's `build_input_ids` and with the test's own reference. (tokenizers 0.13 matters:
without it 4.31 registers `</s>` under the wrong name and splits it into bytes.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medplib.model.conversation import SPECIAL_TOKENS, Turn, build_input_ids  # noqa: E402
from medplib.model.tokenizer import add_medplib_tokens  # noqa: E402

from tests.test_prompt_ids import CASES, SYSTEM, Reference431, train_llama_like_sentencepiece  # noqa: E402

# Runs under transformers 4.31: the original's tokenizer set-up, get_prompt, tokenizer_image_token and
# preprocess_v1 masking, driven by the real 4.31 slow tokenizer.
RUNNER = r'''
import json, sys
from transformers import AutoTokenizer
IMAGE, REGION, IGNORE = -200, -300, -100
folder, system, tokens, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.load(open(sys.argv[4]))
tok = AutoTokenizer.from_pretrained(folder, use_fast=False, legacy=True, padding_side="right")
tok.pad_token = tok.unk_token
for t in tokens[:-2]:
    tok.add_tokens(t, special_tokens=True)
tok.add_tokens(tokens[-2:], special_tokens=True)

def image_ids(prompt):
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for k, c in enumerate(chunks):
        ids += ([IMAGE] if k else []) + c[1:]
    a, b = tok("<region>", add_special_tokens=False).input_ids[0], tok("</region>", add_special_tokens=False).input_ids[0]
    i = 0
    while i < len(ids) - 1:
        if ids[i] == a and ids[i + 1] == b:
            ids.insert(i + 1, REGION); i += 1
        i += 1
    return ids

out = []
for turns in cases:
    msgs = []
    for j, (q, a) in enumerate(turns):
        if j == 0:
            q = ("<image>\n" + q.replace("<image>", "").strip()).strip().replace("<image>", "<im_start><image><im_end>")
        msgs += [("USER", q), ("ASSISTANT", a)]
    conv = system + " "
    for i, (role, m) in enumerate(msgs):
        conv += role + ": " + m + [" ", "</s>"][i % 2] if m else role + ":"
    ids = image_ids(conv)
    target, cur = list(ids), 1
    target[:1] = [IGNORE]
    for rou in conv.split("</s>"):
        if rou == "": break
        parts = rou.split(" ASSISTANT: ")
        if len(parts) != 2: break
        n = len(image_ids(parts[0] + " ASSISTANT: ")) - 2
        target[cur:cur + n] = [IGNORE] * n
        cur += len(image_ids(rou))
    target[cur:] = [IGNORE] * (len(target) - cur)
    if cur != len(ids): target = [IGNORE] * len(ids)
    out.append({"ids": ids, "labels": target if turns[-1][1] is not None else None})
print(json.dumps(out))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", required=True, help="python of a venv with transformers==4.31.0")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = train_llama_like_sentencepiece(Path(tmp) / "tok")
        cases = Path(tmp) / "cases.json"
        cases.write_text(json.dumps(CASES))
        done = subprocess.run([args.python, "-c", RUNNER, str(folder), SYSTEM, json.dumps(SPECIAL_TOKENS), str(cases)],
                              capture_output=True, text=True, check=True)
        expected = json.loads(done.stdout.strip().splitlines()[-1])
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=False, legacy=True)
        add_medplib_tokens(tok)
        ref = Reference431(folder / "tokenizer.model", tok.get_vocab())
        failures = 0
        for turns, want in zip(CASES, expected):
            ids, labels = build_input_ids(tok, SYSTEM, [Turn(q, a) for q, a in turns])
            ref_ids, ref_labels = ref.ids_and_labels(turns)
            ok = ids == want["ids"] == ref_ids and (want["labels"] is None or labels == want["labels"] == ref_labels)
            failures += not ok
            print(f"{'same' if ok else 'DIFFERENT'}  {len(want['ids']):4d} ids  {turns}")
        print(f"{len(CASES) - failures} of {len(CASES)} cases equal to transformers 4.31")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
