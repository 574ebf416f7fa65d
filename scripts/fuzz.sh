#!/usr/bin/env bash
# Fuzz the runner's tokenizers' encoders with libFuzzer under ASan/UBSan (tests/fuzz/fuzz_encode.cpp).
#
#   scripts/fuzz.sh [SECONDS_PER_TOKENIZER] [--merge]
#
# One run per tokenizer format: SmolLM2's tokenizer.json, Llama 3's tiktoken tokenizer.model, and
# a SentencePiece tokenizer.bin converted from a small trained model. Each starts from the corpus
# in tests/fuzz/corpus/encode (kept in the repo) and writes what it finds to a scratch copy; with
# --merge the inputs that add coverage are merged back into the repo's corpus. Exit 1 on any crash,
# sanitizer report or broken property (the reproducer is left in cmake-out-fuzz/). CI runs 30 s per
# tokenizer; a real campaign is 600 or more.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
merge=0
[ "${2:-}" = "--merge" ] && merge=1
command -v clang++ >/dev/null || { echo "error: clang++ missing (scripts/install_native_deps.sh)" >&2; exit 1; }

build=cmake-out-fuzz
mkdir -p "$build"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTORCHCHAT_FUZZ=ON \
    -DTORCHCHAT_SANITIZE=ON -DTORCHCHAT_BUILD_TESTS=OFF -DTORCHCHAT_BUILD_AOTI=OFF -DTORCHCHAT_BUILD_ET=OFF \
    > "$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" -j2 --target fuzz_encode >&2

tokenizers=("$(python3 torchchat.py where smollm2-135m)/tokenizer.json"
            "$(python3 -c 'import llama_models, os; print(os.path.join(os.path.dirname(llama_models.__file__), "llama3", "tokenizer.model"))')")
# A SentencePiece model trained on generated text, converted to llama2.c's tokenizer.bin.
(cd tests/python && python3 -c "
from pathlib import Path
from tiny_tokenizers import write_sentencepiece, write_tokenizer_bin
folder = Path('../../$build/sentencepiece'); folder.mkdir(exist_ok=True)
write_tokenizer_bin(write_sentencepiece(folder), folder / 'tokenizer.bin')")
tokenizers+=("$build/sentencepiece/tokenizer.bin")

corpus=tests/fuzz/corpus/encode
status=0
for tok in "${tokenizers[@]}"; do
    tok=$(realpath "$tok")
    scratch="$build/corpus-$(basename "$tok")"
    rm -rf "$scratch" && mkdir -p "$scratch" && cp "$corpus"/* "$scratch"/
    printf '\n== fuzz_encode %s, %s s\n' "$tok" "$seconds" >&2
    # libFuzzer writes crash reproducers to the working directory: the build folder.
    (cd "$build" && TORCHCHAT_FUZZ_TOKENIZER="$tok" ./tests/fuzz/fuzz_encode -max_total_time="$seconds" -max_len=512 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 "../$scratch" 2>&1 | grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|ERROR|property broken|SUMMARY" >&2) \
        || status=1
    if [ "$merge" -eq 1 ]; then
        (cd "$build" && TORCHCHAT_FUZZ_TOKENIZER="$tok" ./tests/fuzz/fuzz_encode -merge=1 "../$corpus" "../$scratch" > /dev/null 2>&1)
    fi
done
ls "$build"/crash-* "$build"/leak-* "$build"/timeout-* 2>/dev/null && status=1
exit $status
