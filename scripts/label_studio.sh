#!/usr/bin/env bash
# Label Studio in its own virtualenv (.venv-labelstudio of this project, git-ignored): it pins
# Django and friends that must not mix with the project's .venv.
#
#   bash scripts/label_studio.sh install           # idempotent: does nothing when already installed
#   bash scripts/label_studio.sh start [DATA_DIR]  # foreground server on 127.0.0.1:${LS_PORT:-8080}
#   bash scripts/label_studio.sh python ARGS...    # the venv's python (label-studio-sdk importable)
#
# Environment: LS_VENV (default .venv-labelstudio), LS_PORT (8080), LS_USERNAME / LS_PASSWORD /
# LS_USER_TOKEN (the first user, created non-interactively on the first start; a team sets its own).
# The server stores everything in SQLite under DATA_DIR (default data/labelstudio, git-ignored)
# (a fresh DATA_DIR starts from a migrated empty database made by `install`), binds 127.0.0.1
# only, and is started with analytics, Sentry and the PyPI version check off: the test
# (tests/crowd/test_label_studio.py) checks its log for outgoing connections.
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VENV="${LS_VENV:-.venv-labelstudio}"
PY="$LS_VENV/bin/python"
TEMPLATE="$LS_VENV/empty-database"
# One place for the versions: Label Studio 1.23.x and its SDK 2.x (both on PyPI).
LS_SPEC="${LS_SPEC:-label-studio>=1.23,<1.24}"
SDK_SPEC="${SDK_SPEC:-label-studio-sdk>=2,<3}"

installed() {
    [ -x "$PY" ] && "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
ls, sdk = md.version("label-studio"), md.version("label-studio-sdk")
ok = ls.startswith("1.23.") and sdk.split(".")[0] == "2"
print(f"label-studio {ls}, label-studio-sdk {sdk}")
sys.exit(0 if ok else 1)
PY
}

cmd_install() {
    if versions=$(installed); then
        echo "label_studio: already installed ($versions) in $LS_VENV"
    else
        echo "label_studio: installing $LS_SPEC and $SDK_SPEC into $LS_VENV"
        local start=$SECONDS
        [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$LS_VENV"
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet "$LS_SPEC" "$SDK_SPEC"
        versions=$(installed) || { echo "label_studio: install failed (see pip output above)" >&2; exit 1; }
        echo "label_studio: installed $versions in $((SECONDS - start)) s"
    fi
    make_template
}

# Offline, quiet settings for every label-studio command of this script.
ls_env() {
    export LABEL_STUDIO_BASE_DATA_DIR="$(cd "$1" && pwd)"
    export DJANGO_DB=sqlite
    export LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true
    export COLLECT_ANALYTICS=false LABEL_STUDIO_COLLECT_ANALYTICS=false
    export SENTRY_DSN="" FRONTEND_SENTRY_DSN="" LATEST_VERSION_CHECK=false
}

# An empty, fully migrated SQLite database kept in the venv: a fresh data dir starts from a copy
# (~10 s) instead of running Label Studio's few hundred migrations (1.5-3.5 min on 2 busy cores).
make_template() {
    [ -f "$TEMPLATE/label_studio.sqlite3" ] && return 0
    echo "label_studio: migrating an empty database into $TEMPLATE"
    local start=$SECONDS
    rm -rf "$TEMPLATE.tmp" && mkdir -p "$TEMPLATE.tmp"
    # `label-studio user` applies the migrations, then reports that this user does not exist.
    (ls_env "$TEMPLATE.tmp" && "$LS_VENV/bin/label-studio" user --username nobody@localhost \
        --data-dir "$LABEL_STUDIO_BASE_DATA_DIR" >"$TEMPLATE.tmp/migrate.log" 2>&1) \
        || { echo "label_studio: migrating failed, see $TEMPLATE.tmp/migrate.log" >&2; exit 1; }
    [ -f "$TEMPLATE.tmp/label_studio.sqlite3" ] || { echo "label_studio: no database written" >&2; exit 1; }
    rm -rf "$TEMPLATE" && mkdir -p "$TEMPLATE" && cp "$TEMPLATE.tmp/label_studio.sqlite3" "$TEMPLATE/"
    rm -rf "$TEMPLATE.tmp"
    echo "label_studio: database migrated in $((SECONDS - start)) s"
}

cmd_start() {
    local data_dir="${1:-data/labelstudio}"
    mkdir -p "$data_dir"
    installed >/dev/null || { echo "label_studio: not installed; run: bash scripts/label_studio.sh install" >&2; exit 1; }
    if [ ! -f "$data_dir/label_studio.sqlite3" ] && [ -f "$TEMPLATE/label_studio.sqlite3" ]; then
        cp "$TEMPLATE/label_studio.sqlite3" "$data_dir/"
    fi
    ls_env "$data_dir"
    local args=(start --no-browser --internal-host 127.0.0.1 --port "${LS_PORT:-8080}"
                --data-dir "$LABEL_STUDIO_BASE_DATA_DIR")
    if [ -n "${LS_USERNAME:-}" ]; then
        args+=(--username "$LS_USERNAME" --password "${LS_PASSWORD:?set LS_PASSWORD too}")
        # Legacy tokens are off by default since 1.23; the flag applies when the first start
        # creates the organization.
        [ -z "${LS_USER_TOKEN:-}" ] || args+=(--user-token "$LS_USER_TOKEN" --enable-legacy-api-token)
    fi
    exec "$LS_VENV/bin/label-studio" "${args[@]}"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    python) shift; exec "$PY" "$@" ;;
    *) echo "usage: bash scripts/label_studio.sh install | start [DATA_DIR] | python ARGS..." >&2; exit 2 ;;
esac
