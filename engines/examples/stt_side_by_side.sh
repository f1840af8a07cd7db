#!/usr/bin/env bash
# Speech-to-text side by side on this machine: faster-whisper 1.2.1 (CTranslate2) and this
# engine (`stt_bench`) on the same model directory and the same clip, one after the other,
# each printing its model load time, per-run real-time factor (audio seconds per processing
# second, higher is faster), median and word error rate against the spoken text.
#
#   engines/examples/stt_side_by_side.sh [--runs N] [--threads N] [--wav FILE] [--model-dir DIR]
#
# Defaults: the test model of `.ci/fetch-test-models` (Whisper tiny.en, CTranslate2 layout),
# the ~21 s passage `stt_bench` speaks with espeak-ng (apt-get install espeak-ng), 3 runs,
# 2 threads (faster-whisper's `cpu_threads`, our pool's `STUDIO_LLM_THREADS`). The peer
# runs in the venv `.ci/faster-whisper-venv` creates (cached). Builds `stt_bench` in release.
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=3
threads=2
wav=""
model_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --wav) wav=$2; shift 2 ;;
    --model-dir) model_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$model_dir" ]; then
  eval "$(.ci/fetch-test-models)"
  model_dir=$STUDIO_TEST_WHISPER_DIR
fi
python=$(.ci/faster-whisper-venv)
cargo build --release --quiet -p studio-engines --features whisper --example stt_bench
bench=target/release/examples/stt_bench

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reference=()
if [ -z "$wav" ]; then
  # stt_bench speaks its passage; keep the clip and its text for the peer.
  wav=$work/clip.wav
  "$bench" --model-dir "$model_dir" --runs 0 --keep-wav "$wav" >/dev/null
  reference=(--reference "$wav.txt")
fi

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== faster-whisper"
"$python" engines/examples/stt_faster_whisper.py "$model_dir" "$wav" --runs "$runs" \
  --threads "$threads" "${reference[@]}"
echo "== this engine (stt_bench)"
STUDIO_LLM_THREADS=$threads "$bench" --model-dir "$model_dir" --wav "$wav" --runs "$runs" \
  "${reference[@]}"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
