# shellcheck shell=bash
# What the CI side checks share (sourced by ci/hear_validate.sh and ci/min_versions.sh, with
# their arguments and $check set to the caller's name): $repo; $work, the folder given as
# argument 1 or else a temporary one removed at exit; $log, pip's log there; `pip_quiet`;
# and `enter_venv DIR`, which creates DIR's virtual environment unless it exists, activates
# it and upgrades pip.
# shellcheck disable=SC2154  # $check is set by the script that sources this file.
: "${check:?ci/side_venv.sh: set check to the name of the calling script}"
# shellcheck disable=SC2034  # $repo is read by the scripts that source this file.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ge 1 ]]; then
  work="$1"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
log="$work/pip.log"

pip_quiet() {
  # pip's output goes to a log, shown only when it fails.
  if ! pip "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "$check: pip $* failed (log: $log)" >&2
    return 1
  fi
}

enter_venv() {
  [[ -x "$1/bin/python" ]] || python3 -m venv "$1"
  # shellcheck disable=SC1091
  . "$1/bin/activate"
  pip_quiet install -q --upgrade pip
}
