# The two commands of the README:
#   make run   fetch the default model if missing, build, ingest sample_corpus/ (once), and
#              serve the UI and API on http://127.0.0.1:8080/
#   make test  fetch the default model and the browser if missing, run the whole test suite
# .ci/run calls `make test`.

MODEL_DIR ?= models/all-MiniLM-L6-v2
CARGO ?= cargo

.PHONY: run test test-python test-gpu model build bench bench-scale bench-ray bench-finetune quality bench-ner bench-mlm soak fixtures sample-corpus

model:
	./scripts/fetch_model.sh $(MODEL_DIR)

build:
	$(CARGO) build --release

DATA_DIR ?= data

ADDR ?= 127.0.0.1:8080

# Ingests sample_corpus/ into a new data directory only: an existing one is served as it is.
run: model build
	@if [ ! -d $(DATA_DIR)/sled ]; then \
	  ./target/release/clinsearch ingest --model $(MODEL_DIR) --data $(DATA_DIR) sample_corpus/notes.jsonl && \
	  ./target/release/clinsearch eval --model $(MODEL_DIR) --data $(DATA_DIR) --queries sample_corpus/queries.jsonl \
	    --qrels sample_corpus/qrels.tsv --save-set sample; \
	fi
	./target/release/clinsearch stats --data $(DATA_DIR)
	./target/release/clinsearch serve --model $(MODEL_DIR) --data $(DATA_DIR) --addr $(ADDR)

# Benchmarks are compiled (so they cannot rot) but not run: they run on demand (make bench).
# The tests build with failure injection compiled in (`failpoints`); release builds never have it.
test: model
	./scripts/install_test_deps.sh
	$(CARGO) check --benches --examples
	CLINSEARCH_REQUIRE_TEST_DEPS=1 $(CARGO) test --features failpoints --lib --bins --tests
	$(MAKE) test-python

# The Python package, built in the dev profile (it shares target/ with the tests above, so
# only the binding itself compiles), installed, and tested with pytest against the binary
# the tests built; its Ray tests start a three-process cluster and a Serve application. They
# run inside a network namespace that has only loopback (scripts/in_loopback_netns.sh: Ray
# listens on every interface otherwise), which needs root.
test-python:
	MATURIN_PEP517_ARGS="--profile dev" python3 -m pip install --quiet --no-build-isolation ./python
	cd python/tests && CLINSEARCH_REQUIRE_TEST_DEPS=1 CLINSEARCH_BIN=$(CURDIR)/target/debug/clinsearch \
	  $(CURDIR)/scripts/in_loopback_netns.sh timeout 1200 python3 -m pytest -q -p no:cacheprovider .

# The GPU tests (tests/it/gpu.rs) on a machine with CUDA: they fail, rather than skip, when no
# device opens. Not part of `make test` (CI has no GPU).
test-gpu: model
	CLINSEARCH_REQUIRE_GPU=1 $(CARGO) test --features cuda --test it gpu::

# Benchmarks, run on demand (not part of `make test`): each prints ratios against a named peer
# measured in the same run.
bench: model
	$(CARGO) bench --bench embed
	$(CARGO) bench --bench ingest
	$(CARGO) bench --bench serve

# Ten minutes of the real binary under mixed load (SOAK_SECONDS to change): 5xx, latency over
# time, memory growth, file descriptors. Stops by itself.
soak: model
	$(CARGO) bench --bench soak

# Figures at 100,000 and 1,000,000 chunks through the bulk vector import, against hnswlib,
# faiss and tantivy alone (pip install hnswlib faiss-cpu; about 2 hours on 2 cores).
bench-scale: model
	python3 -c "import hnswlib, faiss" 2> /dev/null || python3 -m pip install --quiet hnswlib faiss-cpu
	$(CARGO) bench --bench scale

# Distributed ingest and sharded serving on a local Ray cluster against one machine's
# clinsearch, in one run (release builds; inside a loopback-only network namespace, as root).
bench-ray: model
	$(CARGO) build --release
	python3 -m pip install --quiet ./python
	./scripts/in_loopback_netns.sh python3 benches/ray_bench.py

# Fine-tuning against frozen-embedding baselines on MTSamples (about an hour on 2 cores).
bench-finetune: model
	$(CARGO) bench --bench finetune

# The README's quality table: every retrieval option on every judged collection (about an
# hour on 2 cores the first time; the data directories under target/quality/ are kept).
quality: model
	$(CARGO) bench --bench quality

# NER on NCBI-disease and BC5CDR: fine-tuned against a frozen-encoder baseline.
bench-ner: model
	$(CARGO) bench --bench ner

# Domain-adaptive MLM pretraining on MTSamples: held-out masked-token accuracy before and
# after, a fill-mask demonstration, and the downstream tasks from the adapted model against
# the base over 3 seeds (about 1.5 hours on 2 cores; finished runs are reused).
bench-mlm: model
	$(CARGO) bench --bench mlm

# Regenerates the tiny test models and golden outputs (needs torch, transformers and
# sentence-transformers from PyPI). The results are committed.
# Regenerates sample_corpus/ (synthetic notes, queries, graded qrels).
sample-corpus:
	python3 scripts/make_sample_corpus.py

fixtures: model
	python3 tests/fixtures/make_fixtures.py --default-model $(MODEL_DIR)
