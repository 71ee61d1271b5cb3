"""Loads a folder written by `clinsearch finetune mlm` with Python transformers'
AutoModelForMaskedLM and prints, for each text, the top-5 tokens and probabilities at each
[MASK] as JSON, for tests/it/mlm.rs to compare against clinsearch's fill-mask.

usage: mlm_reference.py MODEL_DIR TEXT...
"""
import json
import sys

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer


def main():
    model_dir, texts = sys.argv[1], sys.argv[2:]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tok(text, return_tensors="pt")
            probs = torch.softmax(model(**batch).logits[0], dim=-1)
            where = (batch["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
            masks = []
            for pos in where.tolist():
                p, ids = probs[pos].topk(5)
                masks.append(
                    {
                        "tokens": tok.convert_ids_to_tokens(ids.tolist()),
                        "scores": p.tolist(),
                    }
                )
            out.append(masks)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
