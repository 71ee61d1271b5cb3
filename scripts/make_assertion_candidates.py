#!/usr/bin/env python3
"""Draws candidate (sentence, concept) pairs from MTSamples for the assertion development set
(tests/fixtures/assertion_dev.tsv). The candidates are then labelled by hand, reading each
sentence: the status column of the fixture is a person's judgement, never this script's or
the annotator's.

Method (also in the fixture's header and the README):
  1. MTSamples transcriptions (CC0), section breaks (",  ") turned into line breaks, split
     into sentences at ". " / "? " / "! " / ".," and line breaks (headings' ": ," kept as ": ").
  2. Sentences of 4-40 words that mention one of CONCEPTS (whole words, any case).
  3. Stratified by a cue in the sentence, to have every status represented: negation cues,
     uncertainty cues, history cues, family cues, conditional cues, and no cue at all;
     QUOTA sentences per stratum, drawn with a fixed seed, at most 2 per note.
The held-out test set (tests/fixtures/assertion_test.tsv) was drawn the same way with
--seed 7 --scale 0.5 --exclude tests/fixtures/assertion_dev.tsv, labelled before the annotator
was run on it, and never used to change the trigger lists.

Usage: scripts/make_assertion_candidates.py [MTSAMPLES_CSV] [--seed N] [--scale F]
           [--exclude FIXTURE.tsv] > candidates.tsv
"""
import csv
import random
import re
import sys

import argparse

ap = argparse.ArgumentParser()
ap.add_argument("csv", nargs="?", default="../shared/data/mtsamples/mtsamples.csv")
ap.add_argument("--seed", type=int, default=20261202)
ap.add_argument("--scale", type=float, default=1.0)
ap.add_argument("--exclude", action="append", default=[])
ARGS = ap.parse_args()
CSV = ARGS.csv
CONCEPTS = ["chest pain", "fever", "chills", "nausea", "vomiting", "shortness of breath", "dyspnea", "cough",
            "pneumonia", "diabetes", "hypertension", "cancer", "fracture", "headache", "edema", "infection",
            "bleeding", "murmur", "rash", "tenderness", "pain", "seizure", "stroke", "asthma", "depression",
            "diarrhea", "constipation", "weakness", "numbness", "dizziness", "syncope", "palpitations",
            "effusion", "mass", "lymphadenopathy", "hematuria", "dysuria", "myocardial infarction",
            "coronary artery disease", "heart disease", "thrombosis", "embolism", "tumor", "malignancy",
            "abscess", "hernia", "appendicitis", "anemia", "obesity", "arthritis", "allergies", "alcohol",
            "tobacco", "smoking", "weight loss", "night sweats", "jaundice", "melena", "wheezing", "cyanosis",
            "clubbing", "hepatosplenomegaly", "deformity", "swelling", "erythema", "discharge", "injury"]
CUES = {
    "negation": r"\b(no|not|denies|denied|without|negative|absent|free of|ruled out|unremarkable|none)\b",
    "uncertain": r"\b(possible|possibly|probable|likely|suspect\w*|concern\w*|question\w*|rule out|r/o|may|could|cannot|versus|vs)\b",
    "history": r"\b(history of|hx|h/o|previous\w*|prior|status post|s/p|years ago|in the past)\b",
    "family": r"\b(mother|father|brother|sister|son|daughter|aunt|uncle|grand\w+|family|maternal|paternal|sibling\w*)\b",
    "conditional": r"\b(if|should|in case|risk\w* of|risks|watch for|monitor\w* for|return)\b",
}
QUOTA = {"negation": 130, "uncertain": 55, "history": 55, "family": 45, "conditional": 45, "none": 60}


def main():
    csv.field_size_limit(1 << 30)
    rng = random.Random(ARGS.seed)
    excluded = set()
    for path in ARGS.exclude:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#") and line.strip():
                    excluded.add(line.rstrip("\n").split("\t")[3])
    pools = {k: [] for k in QUOTA}
    concept_re = re.compile(r"\b(" + "|".join(re.escape(c) for c in sorted(CONCEPTS, key=len, reverse=True)) + r")\b", re.I)
    with open(CSV, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = row["transcription"].replace(",  ", "\n")
            text = re.sub(r"\.,", ".\n", text)
            text = re.sub(r":\s*,\s*", ": ", text)
            for sent in re.split(r"(?<=[.!?])\s+|\n", text):
                sent = sent.strip(" ,")
                n = len(sent.split())
                if not 4 <= n <= 40:
                    continue
                m = concept_re.search(sent)
                # A heading ("DISCHARGE", "ALLERGIES:") is not a mention.
                if not m or m.group(0).isupper() or sent in excluded:
                    continue
                cue = next((k for k, r in CUES.items() if re.search(r, sent, re.I)), "none")
                pools[cue].append((row["note_id"], sent, m.group(0)))
    out = []
    for cue, quota in QUOTA.items():
        quota = round(quota * ARGS.scale)
        pool = pools[cue]
        rng.shuffle(pool)
        per_note = {}
        for note, sent, concept in pool:
            if sum(1 for o in out if o[1] == sent) or per_note.get(note, 0) >= 2:
                continue
            per_note[note] = per_note.get(note, 0) + 1
            out.append((note, sent, concept, cue))
            if sum(1 for o in out if o[3] == cue) >= quota:
                break
    w = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    for note, sent, concept, cue in out:
        w.writerow([note, concept, sent])


if __name__ == "__main__":
    main()
