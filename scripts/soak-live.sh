#!/usr/bin/env bash
# Soak run of `edge run` (docs/live.md, "Measured"): 10,000 frames from the synthetic source (320x240 at
# 60 fps, faster than inference), the default bundle at 160x288, one target taught through the
# JSON API with the disc's box, web page and events on. Prints captured / processed / dropped,
# per-stage timings and resident memory at start, every 500 frames and at the end.
#   scripts/soak-live.sh [FRAMES]        (BIN=path/to/edge to use another build; default: debug)
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-10000}
BIN=${BIN:-target/debug/edge}
[ -x "$BIN" ] || cargo build -p edge
OUT=$(mktemp -d /tmp/fss-soak.XXXXXX)
PORT=${PORT:-8097}
"$BIN" run --source synthetic:320x240 --frames "$FRAMES" --fps 60 --size 160x288 --threads 1 \
  --http "127.0.0.1:$PORT" --state "$OUT/state" --events "$OUT/events.jsonl" \
  --summary "$OUT/summary.json" 2> "$OUT/stderr.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/api/stats" >/dev/null && break; sleep 0.2; done
CAP=$(curl -sf -X POST "127.0.0.1:$PORT/api/capture")
BODY=$(python3 -c "
import json, math, sys
c = json.loads(sys.argv[1]); i = c['frame']; w, h = 320, 240; r = min(w, h) / 6
cx = w / 2 + (w / 2 - 1.5 * r) * math.cos(i * 0.05); cy = h / 2 + (h / 2 - 1.5 * r) * math.sin(i * 0.05)
print(json.dumps({'name': 'disc', 'capture': c['id'], 'box': [round(cx - r), round(cy - r), round(2 * r), round(2 * r)]}))" "$CAP")
curl -sf -X POST -d "$BODY" "127.0.0.1:$PORT/api/targets" >/dev/null
wait $PID
trap - EXIT
grep -v '^web page\|^edge run' "$OUT/stderr.log"
python3 -c "
import json, sys
s = json.load(open(sys.argv[1])); st = s['stats']; r = [k for _, k in s['rss_samples']]
print('captured %d, processed %d, dropped %d (processed + dropped = %d)' % (st['frames_captured'], st['frames_processed'], st['frames_dropped'], st['frames_processed'] + st['frames_dropped']))
print('resident KiB: start %s, first sample %d, min %d, max %d, end %s' % (s['rss_start_kib'], r[0], min(r), max(r), s['rss_end_kib']))" "$OUT/summary.json"
echo "files: $OUT"
