#!/usr/bin/env bash
# Delete the TPU VM (and its queued resource, with --queued). Flags: see common.sh.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$NAME" --force --quiet "${WHERE[@]}"
else
  run gcloud "${TPU[@]}" delete "$NAME" --quiet "${WHERE[@]}"
fi
