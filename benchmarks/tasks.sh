#!/usr/bin/env bash
# The token-cls and causal-lm runs of benchmarks/README.md, as run there (needs ../shared/data).
#   benchmarks/tasks.sh ner     # MiniLM on CoNLL-2003: compare full vs LoRA, then the LoRA settings sweep
#   benchmarks/tasks.sh lm      # SmolLM2 on instruction-data.json: perplexity before and after LoRA, generations
#   NER_SETS=DIR benchmarks/tasks.sh ner-sets [EPOCHS] [SETTINGS...]
#                               # token-cls settings on several NER sets (DIR/<set>/ folders, benchmarks/README.md),
#                               # each LoRA setting through the CLI and PEFT's at the tutorial's through ner_parity.py
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

# name:flags of the token-cls settings compared on several sets (the tutorial's is also run through PEFT)
NER_SETTINGS=(
    "tutorial:--target-modules query,key,value --r 8 --lr 5e-4"
    "all-r16-lr2e-3:--target-modules all-linear --r 16 --lr 2e-3"
    "all-r16-lr1e-3:--target-modules all-linear --r 16 --lr 1e-3"
    "all-r16-lr5e-4:--target-modules all-linear --r 16 --lr 5e-4"
    "full:--method full --lr 1e-4"
)

ner_sets() {
    local epochs="${1:-1}" root="${NER_SETS:?set NER_SETS to the folder of NER sets}" out=runs/bench-ner-sets
    shift || true
    local settings=("${@:-${NER_SETTINGS[@]}}")
    for set in conll2003 ncbi-disease mit-restaurant wnut17; do
        local data="$root/$set" val=()
        [ "$set" = conll2003 ] && data="$DATA/conll2003"
        case "$set" in conll2003 | mit-restaurant) val=(--val-size 500) ;; esac
        for item in "${settings[@]}"; do
            # shellcheck disable=SC2086  # the flags are meant to split
            "$LT" train --task token-cls --dataset "$data" "${val[@]}" --max-length 128 --epochs "$epochs" --no-progress \
                --output "$out/$set/${item%%:*}-${epochs}ep" --overwrite ${item#*:} > /dev/null
        done
        .venv/bin/python benchmarks/ner_parity.py --engine peft --data "$data" "${val[@]}" --epochs "$epochs" \
            --precision auto --out "$out/$set/peft-tutorial-${epochs}ep.json" > /dev/null
    done
    .venv/bin/python benchmarks/ner_table.py "$out"
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
    ner-sets) shift; ner_sets "$@" ;;
    lm) lm ;;
    *) echo "usage: benchmarks/tasks.sh ner|ner-sets|lm" >&2; exit 2 ;;
esac
