#!/usr/bin/env bash
# Installs crossmodal with every extra, and the system packages its parts need:
#   libusb-1.0-0 (open3d 0.20), espeak-ng + sox (offline speech for the demo), ffmpeg libs via PyAV wheels,
#   chromium + chromium-driver (the web page's browser test).
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libusb-1.0-0 espeak-ng sox libgl1 libgomp1 fonts-dejavu-core chromium chromium-driver >/dev/null
fi
# pyproject.toml declares ranges; constraints.txt pins the torch/torchvision pair the tests and benchmarks ran on.
python -m pip install --upgrade-strategy only-if-needed -c constraints.txt -e '.[all,dev]'
