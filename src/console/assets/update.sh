#!/usr/bin/env bash
# Vendors the NHS design system (npm `nhsuk-frontend`) into this folder, so the console
# loads nothing from the internet at run time. Run from anywhere:
#   bash src/console/assets/update.sh 10.6.1
# It compiles the package's Sass with the console's settings (no web fonts, which
# the package loads from assets.nhs.uk; images under /console/assets/), copies the
# compiled JavaScript and the images, and records the version and licence.
set -euo pipefail
version="${1:?usage: update.sh <nhsuk-frontend version>}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --silent --no-audit --no-fund "nhsuk-frontend@$version" sass@1 >/dev/null
cat > console.scss <<'SCSS'
@use "nhsuk-frontend/dist/nhsuk" with (
  $nhsuk-include-font-face: false,
  $nhsuk-assets-path: "/console/assets/"
);
SCSS
npx --no-install sass --no-source-map --style=compressed --load-path=node_modules \
  console.scss "$here/nhsuk-frontend.min.css"
# The source map is not vendored, so its reference goes.
sed "s|//# sourceMappingURL=.*$||" node_modules/nhsuk-frontend/dist/nhsuk/nhsuk-frontend.min.js \
  > "$here/nhsuk-frontend.min.js"
rm -rf "$here/images"
mkdir -p "$here/images"
for f in favicon.ico favicon.svg nhsuk-icon-arrow-down.svg nhsuk-icon-arrow-up.svg \
  nhsuk-icon-arrow-up-down.svg nhsuk-icon-cross.svg; do
  cp "node_modules/nhsuk-frontend/dist/nhsuk/assets/images/$f" "$here/images/$f"
done
echo "$version" > "$here/VERSION"
cat > "$here/LICENCE" <<LICENCE
nhsuk-frontend $version (https://github.com/nhsuk/nhsuk-frontend)

The codebase is released under the MIT Licence.

MIT License

Copyright (c) NHS England

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LICENCE
echo "nhsuk-frontend $version vendored into $here"
