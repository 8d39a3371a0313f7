# shellcheck shell=bash
# Sourced by the real engines' ensure_venv.sh scripts: one cached virtualenv per pinned set
# of versions under the cache root shared with tests/support/server_process.py.
#
#   cached_venv NAME   prints the venv's path and exits if NAME is complete; else takes the
#                      build lock (a build that waited for another finds it complete),
#                      makes a fresh venv at $venv and returns, for the caller to install;
#   venv_complete      marks it complete (a venv without the mark is rebuilt) and prints it.
cache_root="${INE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-node-exporter}"

_venv_ready() {
  [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]
}

cached_venv() {
  venv="$cache_root/$1"
  if _venv_ready; then
    echo "$venv"
    exit 0
  fi
  mkdir -p "$cache_root"
  exec 9>"$cache_root/.$1.lock"
  flock 9
  if _venv_ready; then
    echo "$venv"
    exit 0
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
}

venv_complete() {
  touch "$venv/.complete"
  echo "$venv"
}
