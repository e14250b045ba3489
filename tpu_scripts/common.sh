#!/usr/bin/env bash
# shellcheck disable=SC2034  # the variables below are read by the scripts that source this file
# Shared flag parsing for the TPU VM scripts. Every setting comes from a flag or the environment:
#   --project / GCP_PROJECT      --zone / TPU_ZONE (us-central2-b)     --name / TPU_NAME (gpt-jax)
#   --accelerator / TPU_TYPE (v4-8)    --version / TPU_RUNTIME (tpu-ubuntu2204-base)
#   --dry-run / DRY_RUN=1 prints the commands instead of running them.
# Remaining arguments are left in EXTRA_ARGS for the calling script.
set -euo pipefail

PROJECT="${GCP_PROJECT:-}"
ZONE="${TPU_ZONE:-us-central2-b}"
NAME="${TPU_NAME:-gpt-jax}"
ACCELERATOR="${TPU_TYPE:-v4-8}"
RUNTIME="${TPU_RUNTIME:-tpu-ubuntu2204-base}"
DRY_RUN="${DRY_RUN:-0}"
QUEUED=0
SPOT=0
EXTRA_ARGS=()

usage() {
  sed -n '3,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --project) PROJECT="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) RUNTIME="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    *) EXTRA_ARGS+=("$1"); shift ;;
  esac
done

if [ -z "$PROJECT" ]; then
  echo "error: set --project or GCP_PROJECT" >&2
  exit 2
fi

# run CMD...: print the command (shell-quoted); execute it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [ "$DRY_RUN" != 1 ]; then
    "$@"
  fi
}

TPU=(compute tpus tpu-vm)
WHERE=(--zone "$ZONE" --project "$PROJECT")
