#!/usr/bin/env bash
# The "training" of examples/pipeline: sums the prepared numbers once per epoch, checkpointing each epoch.
set -euo pipefail
mkdir -p model checkpoints
total=0
for epoch in $(seq 1 "$EPOCHS"); do
    sum=$(awk '{s += $1} END {print s}' data/numbers.txt)
    total=$((total + sum))
    echo "epoch $epoch/$EPOCHS: total=$total" | tee "checkpoints/epoch-$epoch.txt"
done
echo "$total" > model/weights.txt
echo "trained by $RUN_BY with $(nproc) CPU(s) visible, memory limit $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null | head -1)"
