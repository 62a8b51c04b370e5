#!/usr/bin/env python3
"""Golden token ids for mil's tokenizer, from an independent implementation.

Reads the tokenizer of models/SmolLM2-135M-Instruct.Q4_1.gguf with the `gguf` package, builds the
equivalent Hugging Face `tokenizers` Tokenizer (BPE from vocab + merges; pre-tokenizer
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)];
ByteLevel decoder; control tokens as added special tokens), encodes a fixed list of strings and
writes
  tests/text/golden/smollm2_tokens.json  (committed: inputs as hex bytes, ids, decoded text)
which tests/text/test_tokenizer_golden.cpp compares with mil's tokenizer read from the same GGUF.
Ill-formed UTF-8 inputs are repaired the way mil documents it (bytes.decode("utf-8", "replace"))
before HF encodes them.

  pip install tokenizers==0.23.3 gguf==0.19.0
  python3 scripts/make_tokenizer_golden.py
"""
import json
import pathlib
import random

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
GOLDEN = ROOT / "tests/text/golden/smollm2_tokens.json"


def field(reader, key):
    f = reader.fields.get("tokenizer.ggml." + key)
    if f is None:
        return None
    if len(f.types) > 1:  # array
        if f.types[1].name == "STRING":
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0].name == "STRING":
        return bytes(f.parts[-1]).decode("utf-8")
    return f.parts[-1].tolist()[0]


def load():
    r = GGUFReader(str(GGUF))
    d = {k: field(r, k) for k in ["model", "pre", "tokens", "token_type", "merges", "bos_token_id",
                                 "eos_token_id", "unknown_token_id", "padding_token_id",
                                 "add_bos_token"]}
    return d


def hf_tokenizer(d):
    vocab = {}
    for i, t in enumerate(d["tokens"]):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in d["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(d["tokens"], d["token_type"]) if ty in (3, 4) and t]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def inputs():
    """Test strings as bytes (some deliberately ill-formed)."""
    s = [
        "", " ", "  ", "\n", "\n\n", "\t", " \t\n ", "Hello", "Hello world", " Hello world",
        "Hello  world", "Hello   world   ", "hello\nworld", "hello\n\nworld", "hello \n world",
        "I'm here", "you're", "we've", "they'll", "he'd", "it's", "don't", "DON'T", "I'M",
        "'s'", "''", "'hello'", "rock 'n' roll", "O'Reilly", "y'all'd've",
        "123", "1234567890", "3.14159", "-42", "1,000,000", "v2.0.1", "x1y2z3", " 7 days",
        "2024-01-01T12:00:00Z", "0x1F600", "１２３", "٣٤٥", "Ⅻ", "½ cup", "10%", "$9.99",
        "def f(x):\n    return x * 2\n", "int main() { return 0; }",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "if x == 1:\n        pass\n    else:\n        raise ValueError('no')",
        "#include <stdio.h>\n", "print(\"héllo\")", "a=b+c*d/e-f", "x->y->z", "a && b || !c",
        "```python\nimport numpy as np\n```", "// comment\n/* block */",
        "<html><body>Hi</body></html>", "{\"key\": [1, 2, 3]}", "SELECT * FROM t WHERE id=3;",
        "https://example.com/path?q=1&r=2", "user@example.com", "C:\\Windows\\System32",
        "😀", "😀😀", "I ❤️ you", "👨‍👩‍👧‍👦 family", "🇫🇷🇩🇪", "emoji at end 🎉", "🎉 at start",
        "你好", "你好，世界！", "日本語のテキスト", "한국어 텍스트", "中文 and English mixed",
        "Привет мир", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
        "ภาษาไทย", "Việt Nam", "Ærøskøbing", "naïve café", "straße", "İstanbul", "ǅ ǈ ǋ",
        "e\u0301", "\u00a0nbsp\u00a0", "a\u2003b", "x\u3000y", "\u200bzero\u200bwidth",
        "\u2028line\u2029para", "\u0085next", "\r\n", "a\r\nb", "a\rb", "\x00null", "\x01\x02\x7f",
        "tab\tseparated\tvalues", "trailing spaces   ", "   leading spaces", "multiple    spaces",
        "\n\n\n\nfour newlines", "mixed \n \n \n", " \n", "  \n  ", "\t\t\tindent",
        "<|im_start|>user\nHi<|im_end|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|endoftext|>", "text<|endoftext|>text", "<|im_start|><|im_end|>", "<|im_start",
        "|im_end|>", "<|im_start|", "< |im_start|>", "<filename>main.py<file_sep>",
        "<|im_start|> spaced <|im_end|>", "<jupyter_code>print(1)<jupyter_output>1",
        "supercalifragilisticexpialidocious", "antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis", "a" * 300, "ab" * 200, "_" * 200,
        "=" * 100, " " * 100, "\n" * 50, "1" * 100, "😀" * 40, "你" * 100, "aaaa bbbb cccc",
        "The quick brown fox jumps over the lazy dog.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "It's a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.",
        "¿Qué tal? ¡Muy bien!", "«quotes» “curly” ‘single’", "em—dash en–dash", "…ellipsis",
        "©®™", "∑∫√∞≠≤≥", "→←↑↓", "♠♣♥♦", "°C", "µs", "Ω", "ℕℤℚℝ", "𝔸𝕓𝒸", "ﬁ ligature",
        "ＡＢＣ fullwidth", "ｶﾀｶﾅ", "\ufeffBOM", "\uffff", "\U0010ffff", "\ue000private",
    ]
    out = [x.encode("utf-8") for x in s]
    out += [  # ill-formed UTF-8
        b"\xff", b"\xfe\xff", b"abc\x80def", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
        b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe2\x82", b"x\xe2\x82",
        b"\xe2\x82y", b"\xf0\x9f\x98", b"\xf0\x9f\x98 smile", b"\xc3", b"\xc3(", b"\x80\x80\x80",
        b"hello\xc3\x28world", b"<|im_start|>\xff<|im_end|>", b"\xf8\x88\x80\x80\x80",
        b"\xfc\x84\x80\x80\x80\x80", b"1\xff2\xfe3",
    ]
    rng = random.Random(1234)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t'.,!?-_()[]{}<>|") + \
        ["é", "ß", "你", "好", "😀", "🎉", "Ж", "ك", "\u00a0", "  ", "'s", "<|im_end|>", "1234"]
    for _ in range(90):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(alphabet) for _ in range(n)).encode("utf-8"))
    for _ in range(10):
        out.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))))
    return out


def main():
    d = load()
    assert d["model"] == "gpt2" and d["pre"] == "smollm", (d["model"], d["pre"])
    tok = hf_tokenizer(d)
    cases = []
    for raw in inputs():
        text = raw.decode("utf-8", errors="replace")
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"hex": raw.hex(), "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({
        "source": "scripts/make_tokenizer_golden.py: HF tokenizers BPE + Digits(individual) + "
                  "ByteLevel over the tokenizer of models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "parse_special": True, "add_bos": False, "cases": cases}, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {len(cases)} cases to {GOLDEN}")


if __name__ == "__main__":
    main()
