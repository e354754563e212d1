#!/usr/bin/env bash
# Runs the main job (`audioclf demo`) and checks its promise: test accuracy >= 0.90 on unseen voices, in time.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
audioclf demo --output "$out/model" --quiet
elapsed=$(( $(date +%s) - start ))
python - "$out/model/metrics.json" "$elapsed" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
accuracy, seconds = metrics["test"]["accuracy"], int(sys.argv[2])
print(f"demo: test accuracy {accuracy:.3f} on unseen voices, {seconds} s")
if accuracy < 0.90:
    sys.exit(f"demo accuracy {accuracy:.3f} is below the 0.90 bar")
PY
