"""Reference scores from pytrec_eval (trec_eval's own code) for the evaluation tests.

usage: eval_reference.py QRELS RUN K1,K2,...
Prints JSON {query: {recall_K..., ndcg_cut_10, map_cut_100, recip_rank_10}}. MRR@10 is
trec_eval's recip_rank over each query's top 10 in trec_eval's own order (score descending,
then document id descending).
"""
import json
import sys

import pytrec_eval

qrels_path, run_path, ks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
qrels = {}
with open(qrels_path) as f:
    for i, line in enumerate(f):
        cols = line.split()
        if not cols:
            continue
        if len(cols) == 3:
            if i == 0:
                try:
                    float(cols[2])
                except ValueError:
                    continue
            q, d, g = cols
        else:
            q, _, d, g = cols
        qrels.setdefault(q, {})[d] = int(float(g))
run = {}
with open(run_path) as f:
    for line in f:
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
measures = {"recall." + ",".join(ks), "ndcg_cut.10", "map_cut.100"}
out = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
top10 = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, docs in run.items()}
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
for q in out:
    out[q]["recip_rank_10"] = rr[q]["recip_rank"]
print(json.dumps(out))
