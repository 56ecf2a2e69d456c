# `make bench`: taskproc against bare arq and Celery, measured in one run on this machine (bench/README.md).
# BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS="--n 10000 --skip-scale"` or `BENCH_ARGS=--smoke`.
BENCH_ARGS ?=

bench: $(STAMP)  ## benchmark vs bare arq and Celery; writes bench/results/ (BENCH_ARGS="--smoke", "--skip-scale" ...)
	$(PY) -m bench $(BENCH_ARGS)
