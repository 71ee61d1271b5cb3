#!/usr/bin/env python3
"""The PyTorch peer of benches/embed.rs: sentence-transformers on the same texts, same
sequence lengths and batch sizes, 2 threads. Prints one JSON object per line:
{"seq": L, "batch": B, "emb_per_s": X}."""
import json
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, texts_path, seqs, batches, repeats = sys.argv[1:6]
torch.set_num_threads(2)
texts = json.load(open(texts_path))
st = SentenceTransformer(model_dir, device="cpu")
for seq in map(int, seqs.split(",")):
    st.max_seq_length = seq
    for batch in map(int, batches.split(",")):
        n = len(texts) if batch > 1 else max(8, len(texts) // 4)
        sample = texts[:n]
        st.encode(sample[: max(batch, 2)], batch_size=batch)  # warm-up
        times = []
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            st.encode(sample, batch_size=batch)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"seq": seq, "batch": batch, "n": n, "emb_per_s": n / statistics.median(times)}), flush=True)
