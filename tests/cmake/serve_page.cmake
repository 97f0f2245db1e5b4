# ferry serve's chat page in headless Chromium through chromedriver's
# WebDriver protocol (tools/serve/serve_page.py, docs/SERVING.md): the page
# loads nothing from elsewhere and streams the API's greedy answers into the
# DOM with a tokens/s line. Skips (77) without chromium and chromedriver
# (Debian chromium chromium-driver; scripts/deps.sh --test).
fy_interop_test(serve_page tools/serve/serve_page.py)
set_tests_properties(serve_page PROPERTIES LABELS "interop;serve" TIMEOUT 120)
