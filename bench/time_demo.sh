#!/usr/bin/env bash
# Time `make demo` from a fresh clone: bench/time_demo.sh DIR
# Clones this repository's committed main into DIR (removed first), runs `make demo` with an empty model
# cache (so the one-time de-quantisation of the embedded model counts), and prints two times: until the app
# answers on http://127.0.0.1:7860/ (it starts before the training), and until every demo checkpoint is built
# and evaluated (the pipeline's status file says done, so every tab is live). Then it stops the app and prints
# each step's own line. Port 7860 must be free.
set -u
DIR=${1:?usage: bench/time_demo.sh DIR}
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
rm -rf "$DIR" && git clone -q "$REPO" "$DIR" && cd "$DIR" || exit 1
export RLHFLAB_CACHE=$DIR/.model-cache
T0=$(date +%s.%N)
make demo > "$DIR/demo.log" 2>&1 &
MPID=$!
STATUS="$DIR/checkpoints/logs/pipeline_status.json"
until curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:7860/ 2>/dev/null | grep -q 200; do
  sleep 1
  kill -0 $MPID 2>/dev/null || { echo "make demo exited before the app answered; see $DIR/demo.log"; exit 1; }
done
T1=$(date +%s.%N)
echo "until serving: $(python3 -c "print(round($T1 - $T0, 1))") s"
until [ -f "$STATUS" ] && python3 -c "import json,sys; sys.exit(0 if json.load(open('$STATUS'))['done'] else 1)" 2>/dev/null; do
  sleep 2
  kill -0 $MPID 2>/dev/null || { echo "make demo exited before the pipeline finished; see $DIR/demo.log"; break; }
done
T2=$(date +%s.%N)
echo "until every tab is live (all checkpoints built): $(python3 -c "print(round($T2 - $T0, 1))") s (log: $DIR/demo.log)"
grep -E "done in|failed after|pipeline finished" "$DIR/demo.log"
pkill -f "$DIR/app.py"; pkill -f "$DIR/.venv/bin/python app.py"; kill $MPID 2>/dev/null
