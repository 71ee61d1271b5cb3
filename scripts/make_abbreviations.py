#!/usr/bin/env python3
"""Generates resources/abbreviations/abbreviations.tsv, the clinical abbreviation dictionary
clinsearch ships (query expansion, both directions), from the source sense inventories of the
Medical Abbreviation and Acronym Meta-Inventory (Grossman Liu et al., Scientific Data 2021;
CC BY 4.0) in ../shared/data/clinical_abbreviations.

Only the inventories that give how often each sense occurs in real clinical notes are used,
because ambiguous abbreviations (PE, MS, RA, CP) are resolved by those frequencies:

  - Vanderbilt clinic notes and Vanderbilt discharge summaries (sense frequency, and the
    written forms with counts, e.g. "SOB_16|sob_4");
  - Stetson sign-out notes (sense proportion).

The Wikipedia-derived lists are left out (CC BY-SA, not CC BY), and so are the inventories
without frequencies (Berman pathology, Columbia obstetrics).

Output columns (tab-separated, one sense per line, sorted):
  abbreviation  lowercase short form
  sense         lowercase long form
  frequency     mean over the sources listing the abbreviation of the sense's share there
                (a sense a source does not list counts 0 in that source), so the senses of
                an abbreviation sum to about 1
  forms         the written forms seen for this sense with their counts ("MS:2|ms:1"),
                empty where no source records them
  sources       which inventories list the sense (vc = Vanderbilt clinic, vd = Vanderbilt
                discharge, st = Stetson)

Usage: scripts/make_abbreviations.py [SOURCE_DIR] [OUT_DIR]
"""

import collections
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    HERE, "..", "..", "shared", "data", "clinical_abbreviations")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "resources", "abbreviations")


def norm(s):
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':  # a CSV-quoted value inside the TSV
        s = s[1:-1].replace('""', '"')
    return re.sub(r"\s+", " ", s.strip().lower())


def bare(s):
    """The letters and digits of a form: "p.o." and "PO" are the same short form."""
    return re.sub(r"[^a-z0-9]", "", s.lower())


def read_vanderbilt(path):
    """{abbr: {sense: (frequency, Counter(form -> count))}}"""
    out = collections.defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header[:5] == ["abbreviation", "sense", "variation", "CUI", "frequency"], header
        for lineno, line in enumerate(f, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 5:
                raise SystemExit(f"{path}:{lineno}: expected 5 columns, found {len(cols)}")
            abbr, sense, variation, _cui, freq = cols[:5]
            abbr, sense = norm(abbr), norm(sense)
            forms = collections.Counter()
            for v in variation.split("|"):
                if "_" in v:
                    form, _, n = v.rpartition("_")
                    if n.isdigit() and form:
                        forms[form] += int(n)
            if "_" in abbr and forms:
                # Vanderbilt writes "/" as "_" in its short forms ("d_c" for d/c): take the
                # spelling from the most common written form.
                top = forms.most_common(1)[0][0].lower().strip(".")
                if bare(top) == bare(abbr):
                    abbr = top
            prev = out[abbr].get(sense)
            f_ = float(freq)
            if prev:  # the same sense listed twice (different CUIs): add the shares
                f_ += prev[0]
                forms += prev[1]
            out[abbr][sense] = (f_, forms)
    return out


def read_stetson(path):
    out = collections.defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                raise SystemExit(f"{path}:{lineno}: expected 3 columns, found {len(cols)}")
            abbr, sense, prop = norm(cols[0]), norm(cols[1]), float(cols[2])
            prev = out[abbr].get(sense)
            out[abbr][sense] = ((prev[0] if prev else 0.0) + prop, collections.Counter())
    return out


def main():
    sources = {
        "vc": read_vanderbilt(os.path.join(SRC, "sources/4-vanderbilt/vanderbilt_clinic_notes.txt")),
        "vd": read_vanderbilt(os.path.join(SRC, "sources/4-vanderbilt/vanderbilt_discharge_sums.txt")),
        "st": read_stetson(os.path.join(SRC, "sources/6-stetson/sense_distribution_448.txt")),
    }
    abbrs = sorted(set().union(*[s.keys() for s in sources.values()]))
    rows = []
    for abbr in abbrs:
        listing = [name for name, s in sources.items() if abbr in s]
        senses = collections.defaultdict(lambda: [0.0, collections.Counter(), set()])
        for name in listing:
            dist = sources[name][abbr]
            total = sum(f for f, _ in dist.values()) or 1.0
            for sense, (f_, forms) in dist.items():
                entry = senses[sense]
                entry[0] += f_ / total / len(listing)
                entry[1] += forms
                entry[2].add(name)
        for sense, (f_, forms, names) in senses.items():
            # A "sense" that is the short form again (e.g. "ms." for ms) expands nothing.
            if bare(sense) == bare(abbr) or not bare(sense):
                continue
            forms_s = "|".join(f"{k}:{v}" for k, v in sorted(forms.items(), key=lambda kv: (-kv[1], kv[0])))
            rows.append((abbr, sense, round(f_, 4), forms_s, ",".join(sorted(names))))
    rows.sort(key=lambda r: (r[0], -r[2], r[1]))
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "abbreviations.tsv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("abbreviation\tsense\tfrequency\tforms\tsources\n")
        for r in rows:
            assert not any("\t" in str(c) or "\n" in str(c) for c in r), r
            f.write("\t".join(str(c) for c in r) + "\n")
    print(f"{path}: {len(rows)} senses of {len(set(r[0] for r in rows))} abbreviations")


if __name__ == "__main__":
    main()
