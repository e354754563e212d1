#!/usr/bin/env bash
# Runs the main job (`audioclf demo`) and checks what it learned on voices it never heard.
# The product's target is 0.90; until the default preset reaches it (see issue 3's notes), CI fails only
# below REGRESSION_BAR, far above chance (1/14 = 0.07), and prints the gap to the target.
set -euo pipefail
TARGET=0.90
REGRESSION_BAR=0.50
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
audioclf demo --output "$out/model" --quiet
elapsed=$(( $(date +%s) - start ))
python - "$out/model/metrics.json" "$elapsed" "$TARGET" "$REGRESSION_BAR" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
accuracy, seconds, target, bar = metrics["test"]["accuracy"], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"demo: test accuracy {accuracy:.3f} on unseen voices (target {target:.2f}), {seconds} s")
if accuracy < target:
    print(f"demo: below the {target:.2f} target by {target - accuracy:.3f}")
if accuracy < bar:
    sys.exit(f"demo accuracy {accuracy:.3f} fell below the regression bar {bar:.2f}")
PY
