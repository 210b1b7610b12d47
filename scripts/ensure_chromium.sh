#!/usr/bin/env bash
# The browser test (tests/comfyui/test_browser.py) drives a Chromium found on PATH. Where none is,
# install Debian's chromium when running as root with apt-get (once: afterwards it is on PATH);
# otherwise say what to install. Never fails: without a Chromium the browser test skips with the
# reason, which in CI (CI=true) fails the run (tests/conftest.py).
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test_comfyui: no Chromium on PATH; installing Debian's chromium for the browser test (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    exit 0
  fi
  echo "test_comfyui: apt-get could not install chromium; the browser test will skip (a failure with CI=true)" >&2
  exit 0
fi
echo "test_comfyui: no Chromium on PATH, so the browser test will skip (a failure with CI=true); install one" \
     "(Debian/Ubuntu as root: apt-get install chromium) or put its folder on PATH" >&2
