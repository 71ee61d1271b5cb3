"""Loads clinsearch's fine-tuned folders with the Python reference libraries and prints
their outputs as JSON, for tests/it/train.rs to compare against clinsearch's.

usage: train_reference.py CLASSIFIER_DIR EMBEDDER_DIR TEXT...
"""
import json
import sys

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    clf_dir, emb_dir, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = AutoTokenizer.from_pretrained(clf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
        probs = torch.softmax(model(**batch).logits, dim=-1)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    st = SentenceTransformer(emb_dir, device="cpu")
    emb = st.encode(texts, convert_to_numpy=True)
    json.dump(
        {
            "labels": labels,
            "probabilities": probs.tolist(),
            "embeddings": emb.tolist(),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
