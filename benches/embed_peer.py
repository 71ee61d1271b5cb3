#!/usr/bin/env python3
"""The PyTorch peer of benches/embed.rs: sentence-transformers on the same texts, same
sequence lengths and batch sizes, 2 threads (or on a GPU: argument 6 names the device and
argument 7 the dtypes, f32/f16/bf16). Prints one JSON object per line:
{"seq": L, "batch": B, "dtype": D, "emb_per_s": X}."""
import json
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, texts_path, seqs, batches, repeats = sys.argv[1:6]
device = sys.argv[6] if len(sys.argv) > 6 else "cpu"
dtypes = sys.argv[7].split(",") if len(sys.argv) > 7 else ["f32"]
torch.set_num_threads(2)
texts = json.load(open(texts_path))
TORCH = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
for dtype in dtypes:
    if dtype not in TORCH or (device == "cpu" and dtype != "f32"):
        continue
    st = SentenceTransformer(model_dir, device=device).to(TORCH[dtype])
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
            eps = n / statistics.median(times)
            print(json.dumps({"seq": seq, "batch": batch, "dtype": dtype, "n": n, "emb_per_s": eps}), flush=True)
