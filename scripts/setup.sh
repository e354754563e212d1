#!/usr/bin/env bash
# One command that installs everything audioclf needs on a fresh Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# libsndfile comes inside the soundfile wheel; espeak-ng is only needed to regenerate the demo data.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
echo "audioclf installed: $(command -v audioclf)"
