#!/usr/bin/env python3
"""Small Hugging Face tokenizers and their golden ids, for mil's tokenizer.json loader.

Trains tiny BPE tokenizers with the `tokenizers` library on a fixed text, one per structure that
include/mil/text/hf_tokenizer.hpp maps (byte-level with the gpt2, SmolLM2, Llama-3 and Qwen2
pre-tokenizers; SentencePiece-style byte-fallback BPE with the legacy Prepend normalizer and with
a Metaspace pre-tokenizer), saves each as the real tokenizer.json (plus a tokenizer_config.json
for some), encodes a list of strings with the library and writes
  tests/text/golden/hf_tokenizers/<name>/tokenizer.json, tokenizer_config.json
  tests/text/golden/hf_tokenizers/golden.json   (inputs as hex, ids without and with the
                                                 post-processor's special tokens, decoded text)
which tests/text/test_hf_tokenizer.cpp compares with mil reading the same files.

Strings are chosen inside what mil documents as reproducible: the Qwen2 strings are NFC already
(mil applies no normalizer), the SentencePiece ones have special tokens only at the start
(Prepend) or none and no leading space (Metaspace).

The SentencePiece-style pieces can differ from run to run (the trainer breaks ties in hash order);
each run writes a tokenizer.json and golden ids that belong together.

  pip install tokenizers==0.23.3
  python3 scripts/make_hf_tokenizer_golden.py
"""
import json
import pathlib

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/text/golden/hf_tokenizers"

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "It's a truth universally acknowledged that they'll say we've done what I'd do.",
    "In 2024 there were 1,234,567 tokens in 89 files; 3.14159 is pi and 2.71828 is e.",
    "def tokenize(text):\n    return [token for token in text.split()]\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += values[i];\n}\n",
    "Hello world! Hello there, hello again. HELLO WORLD.",
    "naïve café résumé façade jalapeño über straße",
    "Привет мир, как дела? Всё хорошо.",
    "東京は日本の首都です。大阪も大きな都市です。",
    "emoji 😀 and 🎉 and ❤️ appear here 😀😀",
    "the theory of the thing: there, these, those, them, then, thence",
    "   indented line\n\n\nthree newlines   trailing spaces   ",
    "<html><body><p>paragraph</p></body></html>",
    "SELECT name, value FROM table WHERE id = 42 ORDER BY name;",
]

STRINGS = [
    "", "Hello", "Hello world", "hello  world", "the theory of everything", "The Theory",
    "they'll", "I'M HERE", "we've done it", "12345", "3.14159", "1,234,567", "x1y22z333",
    "def f(x):\n    return x\n", "\ttab\tseparated", "a\n\nb", "trailing   ", "line\r\nbreak",
    "naïve café", "Привет", "東京", "😀 emoji", "unseen: ζ ψ ω", "quux and quuxes", "<p>",
    "mixed 東京 and naïve 42",
]
SPECIAL_STRINGS = ["<|im_start|>user\nHi<|im_end|>", "text<|endoftext|>more", "<code>x = 1</code>",
                   "<|begin_of_text|>Hello<|eot_id|>"]


def byte_level(name, pre, specials, extra_added=(), normalizer=None, config=None,
               string_merges=False):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if extra_added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_added])
    return save(name, tok, config, string_merges, STRINGS + SPECIAL_STRINGS)


def sentencepiece(name, legacy, config=None):
    # Train pieces on the corpus, then lay the vocabulary out as Llama's: <unk> <s> </s>, the 256
    # byte pieces, then the learned pieces; merges as trained.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=220, show_progress=False, limit_alphabet=60)
    tok.train_from_iterator(CORPUS, trainer)
    learned = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]],
                               unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        strings = STRINGS + ["<s>Hello world", "<s> spaced"]
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
        strings = [s for s in STRINGS if not s.startswith(" ")]
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return save(name, tok, config, False, strings)


def save(name, tok, config, string_merges, strings):
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    if string_merges:  # the older "a b" spelling of merges
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False) + "\n")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False,
                                                                 indent=1) + "\n")
    cases = []
    for s in strings:
        plain = tok.encode(s, add_special_tokens=False).ids
        full = tok.encode(s, add_special_tokens=True).ids
        cases.append({"hex": s.encode("utf-8").hex(), "ids": plain, "ids_with_special": full,
                      "decoded": tok.decode(plain, skip_special_tokens=False)})
    return cases


def main():
    smollm_config = {
        "bos_token": "<|im_start|>",
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": [
            {"name": "default", "template": "{% for message in messages %}{{'<|im_start|>' + "
             "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"},
            {"name": "tool_use", "template": "{{ tools }}"}],
    }
    llama3_config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                     "chat_template": "{{ bos_token }}<|start_header_id|>"}
    spm_config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                  "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                  "chat_template": "{{ bos_token }}[INST] <<SYS>>"}
    llama3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

    def bos_processor(bos):
        return lambda tok: processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=bos + " $A",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])

    golden = {}
    golden["smollm"] = {
        "expect": {"model": "gpt2", "pre": "smollm", "add_bos": False, "bos": "<|im_start|>",
                   "eos": "<|im_end|>", "chat_template_starts": "{% for message"},
        "cases": byte_level("smollm", pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], extra_added=["<code>"],
            config=smollm_config)}
    golden["gpt2"] = {
        "expect": {"model": "gpt2", "pre": "gpt2", "add_bos": False, "bos": None, "eos": None},
        "cases": byte_level("gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                            ["<|endoftext|>"], string_merges=True)}
    golden["llama3"] = {
        "expect": {"model": "gpt2", "pre": "llama3", "add_bos": True, "bos": "<|begin_of_text|>",
                   "eos": "<|eot_id|>", "ignore_merges": True,
                   "chat_template_starts": "{{ bos_token }}"},
        "cases": byte_level_llama3(llama3_specials, llama3_config, bos_processor)}
    golden["qwen2"] = {
        "expect": {"model": "gpt2", "pre": "qwen2", "add_bos": False, "bos": None, "eos": None},
        "cases": byte_level("qwen2", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer=normalizers.NFC())}
    golden["spm_legacy"] = {
        "expect": {"model": "llama", "add_bos": True, "bos": "<s>", "eos": "</s>",
                   "add_space_prefix": True, "chat_template_starts": "{{ bos_token }}[INST]"},
        "cases": sentencepiece("spm_legacy", True, spm_config)}
    golden["spm_metaspace"] = {
        "expect": {"model": "llama", "add_bos": True, "bos": "<s>", "eos": None,
                   "add_space_prefix": True},
        "cases": sentencepiece("spm_metaspace", False)}
    (OUT / "golden.json").write_text(json.dumps({
        "source": "scripts/make_hf_tokenizer_golden.py (tokenizers " + tokenizers.__version__ + ")",
        "tokenizers": golden}, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {sum(len(g['cases']) for g in golden.values())} cases of {len(golden)} "
          f"tokenizers to {OUT}")


def byte_level_llama3(specials, config, bos_processor):
    # As Llama-3: ignore_merges, whole-word tokens that no merge makes, special tokens after the
    # learned vocabulary (in added_tokens only), BOS from a TemplateProcessing post-processor.
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    for t in ["Ġquux", "quuxes", "Ġtheory"]:  # whole words that no merge makes
        vocab.setdefault(t, len(vocab))
    tok.model = models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], ignore_merges=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = bos_processor("<|begin_of_text|>")(tok)
    return save("llama3", tok, config, False, STRINGS + SPECIAL_STRINGS)


if __name__ == "__main__":
    main()
