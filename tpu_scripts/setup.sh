#!/usr/bin/env bash
# Copy this checkout to every worker and install it there with JAX's TPU build. Flags: see common.sh.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/gpt_jax_src.tar.gz"
run tar -czf "$ARCHIVE" -C "$ROOT" --exclude=.git --exclude=.venv --exclude=.ci-venv --exclude=runs .
run gcloud "${TPU[@]}" scp "$ARCHIVE" "$NAME:~/gpt_jax_src.tar.gz" --worker=all "${WHERE[@]}"
run gcloud "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" --command \
  "mkdir -p ~/gpt_jax && tar -xzf ~/gpt_jax_src.tar.gz -C ~/gpt_jax && pip install -q 'jax[tpu]' && pip install -q ~/gpt_jax"
