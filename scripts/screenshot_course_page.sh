#!/usr/bin/env bash
# A picture of outputs/index.html (the course on one page) as a browser shows it, taken by headless
# Chromium: docs/course_page.png. Run the course's scripts first, so that the page has its pictures.
#
#     bash scripts/screenshot_course_page.sh                 # installs Debian's chromium if it is missing
#     bash scripts/screenshot_course_page.sh out.png 1400 6000   # file, window width and height in pixels
set -euo pipefail
cd "$(dirname "$0")/.."
output=${1:-docs/course_page.png}
width=${2:-1400}
height=${3:-7000}
page=outputs/index.html
if [ ! -f "$page" ]; then
    echo "error: $page is missing; run a script first (python exercise1_generate.py writes it)" >&2
    exit 1
fi
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "installing Debian's chromium (apt-get; needs root)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    browser=$(command -v chromium)
fi
# --no-sandbox: Chromium refuses to start its sandbox as root, as in a container
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size="$width,$height" --screenshot="$PWD/$output" "file://$PWD/$page" 2>/dev/null
echo "wrote $output"
