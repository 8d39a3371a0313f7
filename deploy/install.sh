#!/usr/bin/env bash
# Installs inference-node-exporter as a systemd service, from the source tree this script sits
# in (or a wheel):
#
#   /opt/inference-node-exporter/venv                  a virtualenv holding the package
#   /etc/inference-node-exporter/config.toml           the config (written only when absent)
#   /etc/default/inference-node-exporter               ARGS and environment (only when absent)
#   /etc/systemd/system/inference-node-exporter.service
#   user and group inference-node-exporter             system account, no login, no home made
#
# and enables and starts the service when systemd runs. Running it again changes nothing
# unless the package, the unit or the account changed. --uninstall removes all of it but the
# two configuration files. pip honours PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX...: with
# --wheel and a directory of wheels (`pip wheel -w DIR .`) the install needs no network.
set -euo pipefail
umask 022

NAME=inference-node-exporter
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TREE=$(dirname "$HERE")
PIP_OPTS=(--quiet --disable-pip-version-check --no-input)

usage() {
  cat <<EOF
Usage: $0 [OPTIONS]

Install $NAME as a systemd service (see the head of this script).

  --source DIR        install the package from this source tree (default: $TREE)
  --wheel FILE        install the package from this wheel instead
  --python PATH       Python 3.11+ for the virtualenv (default: /usr/bin/python3)
  --device-group G    group to add the user to for /dev/nvidia* (default: the group owning
                      /dev/nvidiactl when not root, else video when it exists)
  --root DIR          install under DIR instead of / (an image or a scratch tree): accounts
                      go to DIR/etc/passwd and group, and the service is enabled for that
                      root's next boot, not started
  --uninstall         remove the service, the virtualenv, the state directory and the
                      account; keep /etc/$NAME and /etc/default/$NAME
  -h, --help          this help
EOF
}

die() { printf '%s: %s\n' "$0" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

ROOT="" SOURCE="" WHEEL="" PYTHON="" DEVICE_GROUP="" UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root|--source|--wheel|--python|--device-group)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --root) ROOT=$2 ;;
        --source) SOURCE=$2 ;;
        --wheel) WHEEL=$2 ;;
        --python) PYTHON=$2 ;;
        --device-group) DEVICE_GROUP=$2 ;;
      esac
      shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --wheel=*) WHEEL=${1#*=}; shift ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --device-group=*) DEVICE_GROUP=${1#*=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (it creates a system account and writes to /etc and /opt)"
ROOT_ARGS=()
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
[ -z "$ROOT" ] || ROOT_ARGS=(--root "$ROOT")

OPT=$ROOT/opt/$NAME
VENV=$OPT/venv
STAMP=$OPT/installed-from
ETC=$ROOT/etc/$NAME
CONFIG=$ETC/config.toml
DEFAULTS=$ROOT/etc/default/$NAME
UNIT=$ROOT/etc/systemd/system/$NAME.service
WANTS=$ROOT/etc/systemd/system/multi-user.target.wants/$NAME.service
STATE=$ROOT/var/lib/$NAME
CHANGED=0

changed() { CHANGED=1; say "$*"; }

# systemd manages services only when it runs as PID 1 of this root (sd_booted(3)).
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# Accounts are read from the files, under --root too (system accounts are local ones).
account_field() {  # FILE NAME FIELD
  [ -f "$1" ] || return 1
  awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; found = 1 } END { exit !found }' "$1"
}
group_id() { account_field "$ROOT/etc/group" "$1" 3; }
user_id() { account_field "$ROOT/etc/passwd" "$1" 3; }

# Set mode and owner only where they differ, so that a second run touches nothing.
ensure_attrs() {  # PATH MODE UID GID
  local want have
  want="$(printf '%o' "$((8#$2))") $3 $4"
  have=$(stat -c '%a %u %g' "$1")
  if [ "$have" != "$want" ]; then
    chmod "$2" "$1"
    chown "$3:$4" "$1"
    changed "set $1 to mode $2, owner $3:$4"
  fi
}

shared_dir() {  # PATH: a directory other packages use too; created when missing, never changed
  [ -d "$1" ] || install -d -m 0755 -o 0 -g 0 "$1"
}

ensure_dir() {  # PATH MODE UID GID
  if [ ! -d "$1" ]; then
    install -d -m "$2" -o "$3" -g "$4" "$1"
    changed "created $1"
  else
    ensure_attrs "$@"
  fi
}

put_file() {  # SOURCE DEST MODE UID GID: write DEST when its content differs
  if [ ! -f "$2" ] || ! cmp -s "$1" "$2"; then
    install -m "$3" -o "$4" -g "$5" "$1" "$2"
    changed "wrote $2"
  else
    ensure_attrs "$2" "$3" "$4" "$5"
  fi
}

seed_accounts() {  # under --root, minimal account files where there are none
  [ -n "$ROOT" ] || return 0
  shared_dir "$ROOT/etc"
  [ -e "$ROOT/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
  [ -e "$ROOT/etc/group" ] || printf 'root:x:0:\n' >"$ROOT/etc/group"
  [ -e "$ROOT/etc/shadow" ] || install -m 0640 /dev/null "$ROOT/etc/shadow"
  if ! grep -q '^root:' "$ROOT/etc/shadow"; then
    printf 'root:*:1:0:99999:7:::\n' >>"$ROOT/etc/shadow"
  fi
  [ -e "$ROOT/etc/gshadow" ] || install -m 0640 /dev/null "$ROOT/etc/gshadow"
  if ! grep -q '^root:' "$ROOT/etc/gshadow"; then
    printf 'root:*::\n' >>"$ROOT/etc/gshadow"
  fi
}

device_group() {
  if [ -n "$DEVICE_GROUP" ]; then
    printf '%s\n' "$DEVICE_GROUP"
    return
  fi
  local owner
  if [ -z "$ROOT" ] && [ -e /dev/nvidiactl ]; then
    owner=$(stat -c %G /dev/nvidiactl)
    if [ "$owner" != root ]; then
      printf '%s\n' "$owner"
      return
    fi
  fi
  if group_id video >/dev/null; then
    printf 'video\n'
  fi
}

ensure_account() {
  seed_accounts
  if ! group_id "$NAME" >/dev/null; then
    groupadd "${ROOT_ARGS[@]}" --system "$NAME"
    changed "created group $NAME"
  fi
  if ! user_id "$NAME" >/dev/null; then
    useradd "${ROOT_ARGS[@]}" --system --gid "$NAME" --no-create-home \
      --home-dir "/var/lib/$NAME" --shell /usr/sbin/nologin \
      --comment "inference-node-exporter daemon" "$NAME"
    changed "created user $NAME"
  fi
  local group members
  group=$(device_group)
  if [ -n "$group" ]; then
    group_id "$group" >/dev/null || die "device group $group does not exist"
    members=$(account_field "$ROOT/etc/group" "$group" 4)
    case ",$members," in
      *",$NAME,"*) ;;
      *) usermod "${ROOT_ARGS[@]}" --append --groups "$group" "$NAME"
         changed "added user $NAME to group $group (NVIDIA devices)" ;;
    esac
  else
    say "no NVIDIA device group found; user $NAME is in no extra group"
  fi
}

check_inputs() {  # before anything is changed
  if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "no wheel at $WHEEL"
  else
    SOURCE=$(cd "${SOURCE:-$TREE}" && pwd)
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not the project's source tree"
  fi
  if [ -z "$PYTHON" ]; then
    PYTHON=/usr/bin/python3
    [ -x "$PYTHON" ] || PYTHON=$(command -v python3) || die "no python3 found; give --python"
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is not Python 3.11 or newer; give --python PATH to one"
}

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    return
  fi
  rm -rf "$VENV" "$STAMP"
  shared_dir "$ROOT/opt"
  ensure_dir "$OPT" 0755 0 0
  "$PYTHON" -m venv "$VENV" \
    || die "$PYTHON -m venv failed (Debian and Ubuntu: apt-get install python3-venv)"
  changed "created virtualenv $VENV"
}

source_digest() {  # what a source install is made of, to tell whether it changed
  (cd "$1" && find pyproject.toml exporter -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

ensure_package() {
  local wanted wheel work=""
  if [ -n "$WHEEL" ]; then
    wanted="wheel $(sha256sum <"$WHEEL" | cut -d' ' -f1)"
  else
    wanted="source $(source_digest "$SOURCE")"
  fi
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && [ -x "$VENV/bin/$NAME" ]; then
    return
  fi
  work=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: the variable is local
  trap "rm -rf '$work'" EXIT
  if [ -n "$WHEEL" ]; then
    wheel=$WHEEL
  else
    # Build from a copy, so that the source tree stays as it is (read-only is fine).
    local items=() item
    for item in pyproject.toml README.md LICENSE LICENSE.txt NOTICE MANIFEST.in setup.cfg \
        setup.py exporter; do
      [ ! -e "$SOURCE/$item" ] || items+=("$item")
    done
    mkdir "$work/src"
    tar -C "$SOURCE" --exclude=__pycache__ --exclude='*.pyc' -cf - "${items[@]}" \
      | tar -C "$work/src" -xf -
    "$VENV/bin/python" -m pip wheel "${PIP_OPTS[@]}" --no-deps -w "$work/dist" "$work/src"
    wheel=$(find "$work/dist" -name '*.whl' -print -quit)
  fi
  # The package itself is always replaced (same version, new code); then its dependencies.
  "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" --force-reinstall --no-deps "$wheel"
  "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" "$wheel"
  if [ -n "$ROOT" ]; then
    # Scripts name their interpreter by absolute path: make it the path on the target.
    "$VENV/bin/python" - "$VENV" "/opt/$NAME/venv" <<'EOF'
import pathlib, sys
venv, target = sys.argv[1], sys.argv[2]
for path in [*pathlib.Path(venv, "bin").iterdir(), pathlib.Path(venv, "pyvenv.cfg")]:
    if path.is_symlink() or not path.is_file():
        continue
    data = path.read_bytes()
    if venv.encode() in data:
        path.write_bytes(data.replace(venv.encode(), target.encode()))
EOF
  fi
  printf '%s\n' "$wanted" >"$STAMP"
  chmod 0644 "$STAMP"
  rm -rf "$work"
  trap - EXIT
  changed "installed the package into $VENV ($wanted)"
}

ensure_files() {
  local gid
  gid=$(group_id "$NAME")
  ensure_dir "$ETC" 0750 0 "$gid"
  if [ -e "$CONFIG" ]; then
    say "kept $CONFIG (the shipped default is $OPT/config.toml.default)"
  else
    install -m 0640 -o 0 -g "$gid" "$TREE/deploy/config.toml" "$CONFIG"
    changed "wrote $CONFIG"
  fi
  ensure_attrs "$CONFIG" 0640 0 "$gid"
  put_file "$TREE/deploy/config.toml" "$OPT/config.toml.default" 0644 0 0

  shared_dir "$ROOT/etc/default"
  if [ ! -e "$DEFAULTS" ]; then
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Environment of $NAME.service, read by systemd at every start.
# ARGS: extra command-line flags, e.g. ARGS="--log.level=debug --gpu.expected-count=8".
# The flags' environment twins (INFERENCE_NODE_EXPORTER_*; see --help) may be set here
# too. Settings are better kept in /etc/$NAME/config.toml.
ARGS=""
EOF
    install -m 0644 -o 0 -g 0 "$tmp" "$DEFAULTS"
    rm -f "$tmp"
    changed "wrote $DEFAULTS"
  fi

  shared_dir "$ROOT/etc/systemd"
  shared_dir "$ROOT/etc/systemd/system"
  put_file "$TREE/systemd/$NAME.service" "$UNIT" 0644 0 0
}

start_service() {
  if systemd_running; then
    local active=0
    systemctl is-active --quiet "$NAME.service" && active=1
    if [ "$CHANGED" = 1 ]; then
      systemctl daemon-reload
    fi
    systemctl enable --quiet --now "$NAME.service"
    if [ "$active" = 1 ] && [ "$CHANGED" = 1 ]; then
      systemctl restart "$NAME.service"
      say "restarted $NAME.service"
    fi
    say "$NAME.service is enabled and running: systemctl status $NAME"
    return
  fi
  say "systemd is not running here${ROOT:+ (--root $ROOT)}: skipped systemctl daemon-reload and" \
      "systemctl enable --now $NAME.service"
  if [ ! -L "$WANTS" ] && command -v systemctl >/dev/null; then
    systemctl "--root=${ROOT:-/}" enable --quiet "$NAME.service"
    changed "enabled $NAME.service for the next boot"
  fi
}

uninstall() {
  if systemd_running; then
    systemctl disable --quiet --now "$NAME.service" 2>/dev/null || true
  elif [ -L "$WANTS" ] && command -v systemctl >/dev/null; then
    systemctl "--root=${ROOT:-/}" disable --quiet "$NAME.service" || rm -f "$WANTS"
  fi
  rm -f "$WANTS"
  if [ -e "$UNIT" ]; then
    rm -f "$UNIT"
    say "removed $UNIT"
    if systemd_running; then
      systemctl daemon-reload
    fi
  fi
  local path
  for path in "$OPT" "$STATE"; do
    if [ -e "$path" ]; then
      rm -rf "$path"
      say "removed $path"
    fi
  done
  # The kept configuration must not stay readable by a group id that may be reused.
  for path in "$ETC" "$CONFIG"; do
    if [ -e "$path" ] && [ "$(stat -c %g "$path")" != 0 ]; then
      chgrp 0 "$path"
    fi
  done
  if user_id "$NAME" >/dev/null; then
    userdel "${ROOT_ARGS[@]}" "$NAME"
    say "removed user $NAME"
  fi
  if group_id "$NAME" >/dev/null; then
    groupdel "${ROOT_ARGS[@]}" "$NAME"
    say "removed group $NAME"
  fi
  say "kept $ETC and $DEFAULTS"
}

if [ "$UNINSTALL" = 1 ]; then
  uninstall
  exit 0
fi
check_inputs
ensure_account
ensure_venv
ensure_package
ensure_files
start_service
if [ "$CHANGED" = 0 ]; then
  say "nothing to change: $NAME is installed as it should be"
fi
