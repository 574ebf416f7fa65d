"""A deterministic corpus of strings that are hard for tokenizers.

Emoji (with skin tones, ZWJ sequences, flags), CJK, accents precomposed and
decomposed (combining marks), many scripts, digits and numbers, code,
whitespace runs of every kind, contractions, and special-token text, mixed at
random. Only characters assigned before Unicode 14 are used, so every regex
engine involved (PCRE2, Rust regex, Oniguruma) agrees on their categories.
"""

from __future__ import annotations

import random

WORDS = (
    "the quick brown fox jumps over the lazy dog Once upon a time there was a little girl named Lily "
    "she liked to play outside in the park with her friends tokenizer runner model export native"
).split()
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "🎉", "🐍", "🤖", "✨", "🙈", "🏳️‍🌈", "👩🏿‍💻", "☕", "🧑‍🚀"]
CJK = ["漢字", "日本語のテキスト", "中文分词测试", "한국어 문장", "カタカナ", "ひらがな", "東京都", "你好，世界！", "「引用」", "ｆｕｌｌｗｉｄｔｈ"]
ACCENTS = ["café", "naïve", "Zoë", "façade", "Ångström", "São Paulo", "Dvořák", "Łódź", "straße", "ŒUVRE", "İstanbul"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303o", "A\u030a", "o\u0302\u0323", "Z\u0335\u0321a\u0337l\u0336g\u0338o", "\u0915\u093f"]
SCRIPTS = ["Привет мир", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Բարեւ", "ሰላም", "ᚠᛇᚻ"]
DIGITS = ["0", "7", "42", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-273.15", "2024-05-01", "٣٤٥", "१२३", "½", "Ⅻ", "①②"]
CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if __name__ == \"__main__\":\n    main()",
    "const re = /^[a-z]+$/i;",
    "SELECT * FROM t WHERE id = 'x';",
    "<div class=\"a\">&nbsp;</div>",
    "x = {'k': [1, 2, 3]}  # comment",
    "std::vector<int> v{1,2,3};",
]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\u200b", "    \n\t  ", "\x0b", "\x0c", "\u2028", "\u0085"]
CONTRACTIONS = ["it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "'S", "o'clock"]
SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|eot_id", "|>", "<|im_end|>x",
    "<|reserved_special_token_5|>", "[INST]", "<<SYS>>", "<0x41>", "\u2581",
]
PUNCTUATION = list(".,;:!?-—–()[]{}\"'`~@#$%^&*_+=/\\|<>…·•¿¡«»")

ATOM_GROUPS = [WORDS, EMOJI, CJK, ACCENTS, COMBINING, SCRIPTS, DIGITS, CODE, WHITESPACE, CONTRACTIONS, SPECIALS, PUNCTUATION]

HANDWRITTEN = [
    "", " ", "  ", "a", "Hello world", " Hello world", "Hello world ", "Hello  world", "hello\nworld",
    "\n", "\n\n\n", "\t", " \t \n", "x" * 300, " " * 100, "\n" * 50, "1" * 40, "ab" * 80,
    "Once upon a time, there was a little girl named Lily.",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    "😀" * 20, "👨‍👩‍👧‍👦👨‍👩‍👧‍👦", "e\u0301\u0301\u0301", "ﬁ ﬂ ℌ ℍ ㎏", "\u00a0\u00a0x\u3000\u3000y",
]


def make_corpus(seed: int = 0, size: int = 2400) -> list[str]:
    rng = random.Random(seed)
    strings = list(dict.fromkeys(HANDWRITTEN))
    seen = set(strings)
    separators = ["", " ", " ", " ", "\n", "  ", "\t"]
    while len(strings) < size:
        kind = rng.random()
        if kind < 0.6:
            # A mix of atoms from a few groups.
            groups = rng.sample(ATOM_GROUPS, rng.randint(1, 4))
            parts = [rng.choice(rng.choice(groups)) for _ in range(rng.randint(1, 12))]
        elif kind < 0.8:
            # A sentence-like run of one group.
            group = rng.choice(ATOM_GROUPS)
            parts = [rng.choice(group) for _ in range(rng.randint(1, 8))]
        else:
            # Random characters from all atoms, to break words apart.
            pool = "".join(rng.choice(g) for g in ATOM_GROUPS for _ in range(3))
            parts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40)))]
        text = ""
        for part in parts:
            text += part + rng.choice(separators)
        if rng.random() < 0.3:
            text = text.strip()
        if text not in seen:
            seen.add(text)
            strings.append(text)
    return strings
