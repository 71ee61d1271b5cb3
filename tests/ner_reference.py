"""The Python references of clinsearch's NER, for tests/it/ner.rs.

usage:
  ner_reference.py seqeval < {"gold": [[tag...]...], "pred": [[tag...]...]}
      seqeval's default-mode figures: micro precision/recall/F1, per type, accuracy.
  ner_reference.py transformers DIR < {"ids": [[id...]...]}
      AutoModelForTokenClassification's logits for each id sequence (no padding) and labels.
"""
import json
import sys


def seqeval_report(data):
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, pred = data["gold"], data["pred"]
    per_type = classification_report(gold, pred, output_dict=True, zero_division=0)
    return {
        "precision": precision_score(gold, pred),
        "recall": recall_score(gold, pred),
        "f1": f1_score(gold, pred),
        "accuracy": accuracy_score(gold, pred),
        "per_type": {
            k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"], "support": int(v["support"])}
            for k, v in per_type.items()
            if not k.endswith(" avg")
        },
    }


def transformers_logits(model_dir, data):
    import torch
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for ids in data["ids"]:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            out.append(logits.tolist())
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return {"labels": labels, "logits": out}


def main():
    data = json.load(sys.stdin)
    if sys.argv[1] == "seqeval":
        json.dump(seqeval_report(data), sys.stdout, default=float)
    else:
        json.dump(transformers_logits(sys.argv[2], data), sys.stdout)


if __name__ == "__main__":
    main()
