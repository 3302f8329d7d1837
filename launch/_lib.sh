#!/usr/bin/env bash
# Helpers shared by the launch scripts (sourced, never run). Every external command goes
# through `cmd` so that --dry-run can print it exactly instead of running it.

# Prefix of every line --dry-run prints for a command; tests parse lines starting with it.
readonly DRY_PREFIX='dry-run$ '
DRY_RUN="${DRY_RUN:-0}"

# Runs "$@", or prints it shell-quoted (one line, copy-pastable) under --dry-run.
cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s' "$DRY_PREFIX"
    printf '%q ' "$@" | sed 's/ $//'
    printf '\n'
  else
    "$@"
  fi
}

# set_opt --some-flag VALUE: sets SOME_FLAG=VALUE (the variable named after the flag).
set_opt() {
  local var
  var=$(printf '%s' "${1#--}" | tr 'a-z-' 'A-Z_')
  printf -v "$var" '%s' "$2"
}
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }
log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# Quotes each argument for a remote shell and joins them with spaces.
quote_args() {
  local out=''
  if (($#)); then out=$(printf ' %q' "$@"); fi
  printf '%s' "${out# }"
}

# Rejects an unset/empty setting, naming the env var and the flag that set it.
require() {
  local var="$1" flag="$2"
  [[ -n "${!var:-}" ]] || die "$var is not set (export $var=... or pass $flag)"
}
