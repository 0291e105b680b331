#!/usr/bin/env bash
# Chromium from Debian for the console's browser tests (tests/test_console_browser.py,
# driven by Playwright; never `playwright install`, which downloads its own browser).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi
