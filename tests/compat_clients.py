"""The real clients against clinsearch's compatible endpoints: prints their results as JSON.

Usage: compat_clients.py BASE_URL KEY_OR_DASH TEXT...

- the official `openai` package: client.embeddings.create(...) with base_url BASE_URL/v1, as
  floats and as base64 (the client's default, decoded by the client), and the error it raises
  for a wrong `dimensions`;
- huggingface_hub's InferenceClient(model=BASE_URL).feature_extraction(...), which posts to
  the base URL itself, as text-embeddings-inference serves it.
"""
import json
import sys

import openai
from huggingface_hub import InferenceClient

base, key, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
key = None if key == "-" else key
out = {}

client = openai.OpenAI(base_url=base + "/v1", api_key=key or "unused", max_retries=0)
r = client.embeddings.create(model="any-name", input=texts, encoding_format="float")
out["openai_float"] = [d.embedding for d in r.data]
out["openai_model"] = r.model
out["openai_usage"] = {"prompt_tokens": r.usage.prompt_tokens, "total_tokens": r.usage.total_tokens}
r = client.embeddings.create(model="text-embedding-3-small", input=texts[0])
out["openai_default"] = [d.embedding for d in r.data]
try:
    client.embeddings.create(model="x", input=texts[0], dimensions=7)
    out["openai_dimensions_error"] = None
except openai.BadRequestError as e:
    out["openai_dimensions_error"] = {"status": e.status_code, "param": e.param, "message": str(e)}
if key:
    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="x", input=texts[0]
        )
        out["openai_wrong_key"] = None
    except openai.AuthenticationError as e:
        out["openai_wrong_key"] = e.status_code

hf = InferenceClient(model=base, token=key)
out["hf"] = [hf.feature_extraction(t).tolist() for t in texts]

print(json.dumps(out))
