#!/usr/bin/env bash
# Install Debian's Chromium and its chromedriver for the playground's browser test (tests/test_playground.py).
# Does nothing when they are already there. No test tool downloads a browser of its own.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
exec bash "$(dirname "$0")/apt-install.sh" "the playground's browser test" chromium chromium-driver
