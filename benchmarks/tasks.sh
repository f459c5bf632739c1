#!/usr/bin/env bash
# The token-cls and causal-lm runs of benchmarks/README.md, as run there (needs ../shared/data).
#   benchmarks/tasks.sh ner     # MiniLM on CoNLL-2003: compare full vs LoRA, then the LoRA settings sweep
#   benchmarks/tasks.sh lm      # SmolLM2 on instruction-data.json: perplexity before and after LoRA, generations
# Outputs go to runs/bench-*. Each command is the CLI a user runs; nothing here is a special code path.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LT=".venv/bin/loratune"
DATA=../shared/data

ner() {
    local common=(--dataset "$DATA/conll2003" --val-size 500 --max-length 128 --no-progress)
    # the task (token-cls) is inferred from the CoNLL files; each method trains with token-cls's defaults
    "$LT" compare "${common[@]}" --epochs 1 --methods full,lora --output runs/bench-ner --overwrite
    local sweep=(
        "tutorial:--target-modules query,key,value --r 8 --lr 5e-4 --epochs 1"
        "qkv-r8:--target-modules query,key,value --r 8 --lr 2e-3 --epochs 1"
        "all-r8:--r 8 --epochs 1"
        "all-r16-3ep:--epochs 3"
        "full-3ep:--method full --epochs 3"
    )
    for item in "${sweep[@]}"; do
        # shellcheck disable=SC2086  # the flags are meant to split
        "$LT" train --task token-cls "${common[@]}" --output "runs/bench-ner-sweep/${item%%:*}" --overwrite ${item#*:} \
            | grep -E '^(f1 \(test\)|train time|peak memory)'
    done
}

lm() {
    local file="$DATA/lm/instruction-data.json" split=(--train-size 935 --eval-size 110)
    "$LT" eval --model smollm2 --dataset "$file" "${split[@]}" --batch-size 16 --json
    "$LT" train --task causal-lm --model smollm2 --train-file "$file" "${split[@]}" --target-modules q_proj,v_proj \
        --max-length 256 --epochs 1 --batch-size 8 --lr 1e-3 --precision bf16 --eval-every 40 --log-every 5 \
        --output runs/bench-lm --overwrite --no-progress
    "$LT" eval --adapter runs/bench-lm/adapter --batch-size 16 --json
    local prompts=("Rewrite the sentence using a simile.

The car is very fast." "What type of cloud is typically associated with thunderstorms?")
    for prompt in "${prompts[@]}"; do
        "$LT" generate --model smollm2 --temperature 0 --max-new-tokens 64 "$prompt"
        "$LT" generate --adapter runs/bench-lm/adapter --temperature 0 --max-new-tokens 64 "$prompt"
    done
}

case "${1:-}" in
    ner) ner ;;
    lm) lm ;;
    *) echo "usage: benchmarks/tasks.sh ner|lm" >&2; exit 2 ;;
esac
