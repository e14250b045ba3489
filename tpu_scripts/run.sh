#!/usr/bin/env bash
# Run one gpt-jax command on every worker at once (multi-host: `gpt-jax generate --distributed ...`), then copy
# worker 0's output file back. Usage: run.sh [flags] -- generate --distributed "ROMEO:" --seed 0
# The command's stdout on worker 0 is saved as ~/gpt_jax_out.txt there and copied to ./gpt_jax_out.txt here.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

if [ "${#EXTRA_ARGS[@]}" -eq 0 ]; then
  echo "error: give the gpt-jax command after --, e.g. -- generate --distributed \"ROMEO:\"" >&2
  exit 2
fi
printf -v QUOTED ' %q' "${EXTRA_ARGS[@]}"
run gcloud "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" --command "gpt-jax${QUOTED} > ~/gpt_jax_out.txt"
run gcloud "${TPU[@]}" scp "$NAME:~/gpt_jax_out.txt" ./gpt_jax_out.txt --worker=0 "${WHERE[@]}"
