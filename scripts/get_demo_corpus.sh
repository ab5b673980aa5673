#!/usr/bin/env bash
# Fetches and prepares the demo corpus: 100,000 real English sentences from
# many sources (the npm package nlp-corpus: news, speeches, fiction,
# transcripts, forum posts; about 8.8 MB), one sentence per line in
# data/demo/raw/*.txt, then byte-tokenized by `srgpt prepare` into
# data/demo/train_*.bin, data/demo/val_*.bin and data/demo/summary.json for
# configs/demo.json. Each sentence is a document; documents are separated by
# byte 0. Everything lands under data/, which git ignores. Needs npm (scripts/install_deps.sh)
# and nothing else from the network. Idempotent.
#   scripts/get_demo_corpus.sh [PATH_TO_SRGPT]   (default: build/srgpt)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
srgpt="${1:-$root/build/srgpt}"
npm_dir="$root/data/demo/npm"
raw_dir="$root/data/demo/raw"
package="nlp-corpus@4.4.0"

if [ ! -x "$srgpt" ]; then
  echo "error: srgpt binary '$srgpt' not found; build first (scripts/build.sh) or pass its path" >&2
  exit 1
fi

corpus="$npm_dir/node_modules/nlp-corpus/builds"
if [ ! -f "$corpus/doc-0.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "error: npm not found; run scripts/install_deps.sh" >&2; exit 1; }
  echo "installing npm package $package into $npm_dir"
  mkdir -p "$npm_dir"
  npm install --loglevel=error --no-audit --no-fund --prefix "$npm_dir" "$package" || {
    echo "error: npm could not install $package from the npm registry (no network? behind a proxy: npm config set proxy URL)" >&2
    exit 1
  }
fi

# Each builds/doc-N.json is a JSON array of sentences: one line per sentence
# (the few with line breaks inside get spaces instead).
rm -rf "$raw_dir.tmp"
mkdir -p "$raw_dir.tmp"
node - "$corpus" "$raw_dir.tmp" <<'JS'
const fs = require('fs');
const path = require('path');
const [corpus, out] = process.argv.slice(2);
const files = fs.readdirSync(corpus).filter(f => /^doc-\d+\.json$/.test(f));
if (files.length === 0) throw new Error(`no doc-N.json files in ${corpus}`);
let sentences = 0;
for (const file of files) {
  const lines = JSON.parse(fs.readFileSync(path.join(corpus, file), 'utf8'))
                    .map(s => s.replace(/\s*[\r\n]+\s*/g, ' ').trim())
                    .filter(s => s.length > 0);
  sentences += lines.length;
  const number = file.match(/\d+/)[0].padStart(3, '0');
  fs.writeFileSync(path.join(out, `doc-${number}.txt`), lines.join('\n') + '\n');
}
console.log(`extracted ${sentences} sentences from ${files.length} files`);
JS
rm -rf "$raw_dir"
mv "$raw_dir.tmp" "$raw_dir"

"$srgpt" prepare --input "$raw_dir/*.txt" --tokenizer byte --split lines --val-fraction 0.01 --seed 1337 \
  --out "$root/data/demo"
