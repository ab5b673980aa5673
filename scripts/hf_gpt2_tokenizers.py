"""transformers' two GPT-2 tokenizers built from OpenAI's published files
(encoder.json, vocab.bpe), for the tokenizer cross-checks. The fast one is
loaded with from_pretrained from a directory holding the files under the
Hugging Face names (vocab.json, merges.txt): constructing GPT2TokenizerFast
directly from file paths gives an empty tokenizer in recent transformers
(every text encodes to [], seen on the H100 host with transformers 5)."""
import os
import shutil
import tempfile


def load_gpt2_tokenizers(vocab, merges):
    """{"GPT2Tokenizer": slow, "GPT2TokenizerFast": fast} from encoder.json and vocab.bpe paths."""
    from transformers import GPT2Tokenizer, GPT2TokenizerFast

    with tempfile.TemporaryDirectory() as hf_dir:
        shutil.copyfile(vocab, os.path.join(hf_dir, "vocab.json"))
        shutil.copyfile(merges, os.path.join(hf_dir, "merges.txt"))
        fast = GPT2TokenizerFast.from_pretrained(hf_dir)
    return {"GPT2Tokenizer": GPT2Tokenizer(vocab, merges), "GPT2TokenizerFast": fast}
