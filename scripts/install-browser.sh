#!/usr/bin/env bash
# Install Debian's Chromium and its chromedriver for the playground's browser test (tests/test_playground.py).
# Does nothing when they are already there; never prompts. No browser download of a test tool's own is used.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-browser.sh: no apt-get here; install Chromium and a matching chromedriver yourself" \
         "(the browser test is skipped without them, and fails under CI=true)." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"  # -n: fail instead of prompting for a password
fi

echo "install-browser.sh: installing chromium and chromium-driver" >&2
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
