#!/usr/bin/env bash
# MNMEF training on the CPU (no GPU is lent to this project). Each mode's fixed settings are a recipe file in
# daviz/mnmef/recipes/ (`daviz train --recipe NAME`; flags override them); the script adds what its arguments choose.
#
#   scripts/train_cpu.sh warm SYSTEM SIGMA SECONDS        the warm-started pretraining at N = 10 (recipe cpu-warm)
#   scripts/train_cpu.sh finetune SYSTEM SIGMA N SECONDS  the per-N fine-tune of the shipped N = 10 weights (cpu-finetune);
#                                                         FROM=weights.pt fine-tunes other weights instead: other
#                                                         N = 10 weights, or a neighbouring N's fine-tune (a chain,
#                                                         e.g. N = 40 -> 100; copy it into train_state/ first, so
#                                                         the trunk can resume after the shipped file is replaced);
#                                                         GRAD_WINDOW=G backpropagates through G cycles (default 1);
#                                                         SEED=S draws another seed's data; UNFREEZE=1 trains the
#                                                         set transformer too (the paper freezes it); TAG=T keeps
#                                                         such an experiment's trunk apart (_T; promoted as any other)
#   scripts/train_cpu.sh pretrain SYSTEM SIGMA EPOCHS BATCH   the first shipped weights' recipe (cpu-pretrain)
#   scripts/train_cpu.sh wsd SYSTEM SIGMA UNTIL_STEP           the short-budget recipe of the learning curve (cpu-wsd)
#
# warm, finetune: SECONDS of wall time on one thread. The resumable trunk lives in pretrained/train_state/
# (committed, so the next session continues it exactly); the run ends with a branch decayed from the trunk,
# which replaces the shipped pretrained/SYSTEM_sigmaSIGMA_N10[_ftN].pt only if it scores better on the tune set
# (python -m daviz.mnmef.promote). A new fine-tune starts from the best of three starts on the tune set
# (scripts/compare_starts.py: the N = 10 weights as they are, with N's prior swapped in, or heads zeroed = the
# EnKF at N); a fine-tune trunk refuses to resume once the N = 10 weights it started from were replaced (delete
# it to fine-tune the new ones).
# pretrain, wsd: the recipes of the first shipped weights (one fixed observation-noise draw per chain, no warm
# start); their checkpoints go to runs/ and are exported to pretrained/ as they are.
set -euo pipefail
mode=$1 sys=$2 sy=$3
mkdir -p runs pretrained
if [ "$mode" = warm ]; then
  seconds=$4
  trunk="pretrained/train_state/${sys}_s${sy}_N10_warm.pt"
  rm -f "${trunk%.pt}_decayed.pt" "${trunk%.pt}_decayed.json"  # a stale branch must not be promoted
  daviz train --recipe cpu-warm --system "$sys" --sigma-y "$sy" --budget-seconds "$seconds" --threads 1 \
    --checkpoint-minutes 5 --no-progress --out "$trunk" --resume \
    --note "CPU warm-started pretraining (scripts/train_cpu.sh warm; recipe cpu-warm), spread over sessions"
  cand="${trunk%.pt}_decayed.pt"
  [ -f "$cand" ] || cand=$trunk
  python -m daviz.mnmef.promote --candidate "$cand" --shipped "pretrained/${sys}_sigma${sy}_N10.pt" \
    --curve "results/mnmef_warm_curve_${sys}_s${sy}.json"
elif [ "$mode" = wsd ]; then
  until=$4
  note="CPU short recipe (no GPU lent), wsd: 2048 windows x 60 cycles, batch 64, Table C.8 LR, 20 warm-up steps, constant LR, cosine decay over the last 20% to step $until (a decayed branch of the resumable trunk runs/${sys}_s${sy}_N10_wsd.pt), AdamW weight decay 1e-2, g = 2·softmax; the full Table C.8 recipe is 8192 x 60 for 1000 epochs"
  daviz train --recipe cpu-wsd --system "$sys" --sigma-y "$sy" \
    --until-step "$until" --threads 1 --checkpoint-minutes 3 --no-progress --note "$note" \
    --out "runs/${sys}_s${sy}_N10_wsd.pt" --resume
  src="runs/${sys}_s${sy}_N10_wsd_decayed.pt"
  [ "$until" -ge 3000 ] && src="runs/${sys}_s${sy}_N10_wsd.pt"
  python -m daviz.mnmef.commands export --from "$src" --out "pretrained/${sys}_sigma${sy}_N10.pt"
elif [ "$mode" = pretrain ]; then
  epochs=$4 batch=$5
  steps=$(( 2048 / batch * epochs ))
  note="CPU reduced recipe (no GPU lent): 2048 windows x 60 cycles, batch $batch, $epochs epochs ($steps AdamW steps), LR halved at 20/30/40% of the epochs; the full Table C.8 recipe is 8192 x 60 for 1000 epochs"
  daviz train --recipe cpu-pretrain --system "$sys" --sigma-y "$sy" --batch-size "$batch" --epochs "$epochs" \
    --threads 1 --checkpoint-minutes 3 --no-progress --note "$note" --out "runs/${sys}_s${sy}_N10.pt" --resume
  python -m daviz.mnmef.commands export --from "runs/${sys}_s${sy}_N10.pt" --out "pretrained/${sys}_sigma${sy}_N10.pt"
else
  N=$4 seconds=$5
  from=${FROM:-pretrained/${sys}_sigma${sy}_N10.pt}
  trunk="pretrained/train_state/${sys}_s${sy}_ft${N}${TAG:+_$TAG}.pt"
  rm -f "${trunk%.pt}_decayed.pt" "${trunk%.pt}_decayed.json"  # a stale branch must not be promoted
  start=enkf  # a new fine-tune starts from the best of three starts on the tune set (a resumed one from its trunk)
  [ -f "$trunk" ] || start=$(python scripts/compare_starts.py --system "$sys" --sigma-y "$sy" --N "$N" --weights "$from" --best)
  daviz finetune --recipe cpu-finetune --from "$from" --N "$N" --warm-start "$start" \
    --grad-window "${GRAD_WINDOW:-1}" ${SEED:+--seed "$SEED"} ${UNFREEZE:+--train-set-transformer true} \
    --budget-seconds "$seconds" --threads 1 --checkpoint-minutes 5 --no-progress --out "$trunk" --resume \
    --note "CPU fine-tune for N=$N (scripts/train_cpu.sh finetune; recipe cpu-finetune), spread over sessions"
  cand="${trunk%.pt}_decayed.pt"
  [ -f "$cand" ] || cand=$trunk
  python -m daviz.mnmef.promote --candidate "$cand" --shipped "pretrained/${sys}_sigma${sy}_N10_ft${N}.pt" --N "$N" \
    --curve "results/mnmef_warm_curve_${sys}_s${sy}_ft${N}.json"
fi
