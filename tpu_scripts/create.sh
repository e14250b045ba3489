#!/usr/bin/env bash
# Create a TPU VM (or, with --queued, a queued resource that becomes one). Flags: see common.sh.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [ "$QUEUED" = 1 ]; then
  args=(compute tpus queued-resources create "$NAME" --node-id "$NAME" --accelerator-type "$ACCELERATOR"
        --runtime-version "$RUNTIME" "${WHERE[@]}")
  [ "$SPOT" = 1 ] && args+=(--spot)
  run gcloud "${args[@]}"
else
  args=("${TPU[@]}" create "$NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${WHERE[@]}")
  [ "$SPOT" = 1 ] && args+=(--spot)
  run gcloud "${args[@]}"
fi
