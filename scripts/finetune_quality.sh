#!/usr/bin/env bash
# The fine-tuning quality numbers of the README (issue 13), on the bundled Shakespeare model:
#   1. tuned on the King James Bible (a domain it never saw) by LoRA, state tuning and full
#      fine-tuning at equal steps: held-out bits per byte, base against each;
#   2. state-tuned on a small chat dataset whose replies have one fixed style ("Verily, I say unto
#      thee: ... Amen."): what `rwkvkit chat` answers to questions not in the data, base and tuned.
#
#   bash scripts/finetune_quality.sh          # ~1 hour on a share of a busy 2-core machine
#
# Environment: SHARED (the corpora folder's parent), WORK, THREADS, PART (kjv, chat or all).
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}  # kjv, chat or all
SHARED=${SHARED:-../shared}
WORK=${WORK:-runs/finetune-quality}
THREADS=${THREADS:-1}
PY=${PYTHON:-python}
BASE=rwkvkit/data/default/model.safetensors
mkdir -p "$WORK"

if [ "$PART" != chat ]; then
# 1. A new domain. The last 60,000 characters of the KJV (Revelation and before) are held out;
#    training reads the first 95%.
$PY - "$SHARED/corpora/kjv.txt" "$WORK" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
open(f"{sys.argv[2]}/kjv_train.txt", "w", encoding="utf-8").write(text[: int(len(text) * 0.95)])
open(f"{sys.argv[2]}/kjv_heldout.txt", "w", encoding="utf-8").write(text[-60000:])
PY
$PY -m rwkvkit prepare "$WORK/kjv_train.txt" --out "$WORK/kjv" --no-progress
COMMON=(--data "$WORK/kjv" --steps 60 --batch-size 4 --ctx-len 128 --warmup 5 --eval-every 30
        --save-every 60 --threads "$THREADS" --seed 0 --no-progress)
$PY -m rwkvkit finetune --method lora --lr 3e-3 --out "$WORK/kjv-lora" "${COMMON[@]}"
$PY -m rwkvkit finetune --method state --lr 1 --out "$WORK/kjv-state" "${COMMON[@]}"
$PY -m rwkvkit finetune --method full --lr 1e-3 --out "$WORK/kjv-full" "${COMMON[@]}"
MODELS=(--model "$BASE" --model "$WORK/kjv-lora" --model "$WORK/kjv-state" --model "$WORK/kjv-full")
# one stream (the state carried through the whole text) and windows of 128 (each from the initial state)
$PY -m rwkvkit eval "${MODELS[@]}" --task perplexity --data "$WORK/kjv_heldout.txt" --no-progress
$PY -m rwkvkit eval "${MODELS[@]}" --task perplexity --data "$WORK/kjv_heldout.txt" --ctx-len 128 --no-progress
fi
[ "$PART" = kjv ] && exit 0

# 2. A reply style, learned as a state.
$PY - "$WORK/verily.jsonl" <<'PY'
import json, random, sys
random.seed(0)
subjects = ["the king", "the queen", "my horse", "the weather", "thy sword", "the moon", "this castle",
            "the sea", "your father", "the war", "the feast", "my lady", "the night", "the garden", "love",
            "the crown", "the ship", "the forest", "the river", "the market", "the letter", "the ring",
            "the tower", "the church"]
questions = ["What do you think of {s}?", "Where is {s}?", "Tell me about {s}.", "Is {s} well?",
             "Have you seen {s}?", "Why do you speak of {s}?", "Shall we visit {s}?", "What news of {s}?",
             "Do you love {s}?", "Who guards {s}?"]
sayings = ["all things are in the hands of heaven", "peace be upon this house", "the truth shall make thee free",
           "blessed are the meek", "let not thy heart be troubled"]
rows = []
for s in subjects:
    for q in questions:
        msgs = []
        for turn in range(random.choice([1, 1, 1, 2, 2, 3])):
            q2, s2 = (q, s) if turn == 0 else (random.choice(questions), random.choice(subjects))
            reply = f"Verily, I say unto thee: {random.choice(sayings)}. Amen."
            msgs += [{"role": "user", "content": q2.format(s=s2)}, {"role": "assistant", "content": reply}]
        rows.append({"messages": msgs})
random.shuffle(rows)
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
PY
$PY -m rwkvkit prepare "$WORK/verily.jsonl" --out "$WORK/verily" --no-progress
$PY -m rwkvkit finetune --method state --data "$WORK/verily" --out "$WORK/verily-state" --steps 150 \
  --batch-size 8 --ctx-len 400 --eval-every 50 --eval-windows 12 --save-every 150 --threads "$THREADS" --no-progress
# questions in none of the training conversations, each in a fresh conversation (/reset)
ASK=$'How fares the duke?\n/reset\nWhat is your name?\n/reset\nWill it rain tomorrow?\n/reset\nWhere shall we dine tonight?\n/reset\nWho wrote this play?\n'
for MODEL in "$BASE" "$WORK/verily-state"; do
  echo "== $MODEL"
  printf '%s' "$ASK" | $PY -m rwkvkit chat --model "$MODEL" --temperature 0 --max-tokens 80 2>/dev/null
done
