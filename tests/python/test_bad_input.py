"""Careless or hostile input to the Python CLI: one line and a non-zero exit, never a traceback; or
a clean run where the input is only odd (bytes that are not UTF-8, a tiny temperature)."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from backend_helpers import ROOT, cli
from test_cli import assert_one_line_error
from tiny_models import tiny_hf_model, write_bare_pt, write_gguf
from tiny_tokenizers import write_sentencepiece


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A Meta-style checkpoint (state dict + params.json) and a SentencePiece tokenizer."""
    folder = tmp_path_factory.mktemp("bare")
    model = tiny_hf_model("llama2")
    return model, write_bare_pt(model, folder / "model.pt"), write_sentencepiece(folder / "sp")


def run_cli(args, stdin=None, **kw):
    """torchchat.py ARGS with raw bytes in and out (argv may hold bytes that are not UTF-8)."""
    return subprocess.run([sys.executable, "torchchat.py", *args], cwd=ROOT, input=stdin, capture_output=True,
                          timeout=300, **kw)


def generate_args(ckpt, tok):
    return ["generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--max-new-tokens", "3"]


def test_prompt_and_chat_input_that_is_not_utf8_runs(bare):
    _, ckpt, tok = bare
    p = run_cli([*generate_args(ckpt, tok), "--temperature", "0", "--prompt", b"caf\xe9 \xff"])
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    p = run_cli(["chat", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--max-new-tokens", "3"],
                stdin=b"caf\xe9 \xff\n")
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr


def test_chat_with_stdin_closed(bare):
    _, ckpt, tok = bare
    p = subprocess.run([sys.executable, "torchchat.py", "chat", "--checkpoint-path", str(ckpt), "--tokenizer-path",
                        str(tok)], cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                       preexec_fn=lambda: os.close(0))
    assert_one_line_error(p, "standard input, which is closed")


def test_tiny_temperature_samples_like_greedy(bare):
    _, ckpt, tok = bare
    args = [*generate_args(ckpt, tok), "--prompt", "Once"]
    tiny, greedy = cli(*args, "--temperature", "1e-40"), cli(*args, "--temperature", "0")
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


@pytest.mark.parametrize("flags,pattern", [(["--temperature", "inf"], "--temperature"),
                                           (["--temperature", "nan"], "--temperature"),
                                           (["--seed", str(2**70)], "--seed"), (["--seed", "-1"], "--seed")])
def test_bad_sampling_values(bare, flags, pattern):
    _, ckpt, tok = bare
    assert_one_line_error(cli(*generate_args(ckpt, tok), *flags), pattern)


@pytest.mark.e2e  # the real tokenizer and model
def test_eval_corpus_of_one_token(tmp_path):
    """SmolLM2 adds no BOS: one token leaves nothing to score."""
    from torchchat.registry import model_dir

    if not (model_dir("smollm2-135m") / "tokenizer.json").exists():
        pytest.skip("SmolLM2 is not downloaded (scripts/setup.sh)")
    (tmp_path / "one.txt").write_text("a")
    assert_one_line_error(cli("eval", "smollm2-135m", "--text-file", str(tmp_path / "one.txt")), "too short")


@pytest.mark.parametrize("field,value,pattern", [("n_heads", 0, "n_heads"), ("n_kv_heads", 0, "n_kv_heads"),
                                                 ("norm_eps", math.nan, "norm_eps"), ("rope_theta", 0, "rope_theta"),
                                                 ("dim", -4, "dim")])
def test_params_json_with_impossible_values(bare, tmp_path, field, value, pattern):
    _, ckpt, tok = bare
    shutil.copy(ckpt, tmp_path / "model.pt")
    params = json.loads((ckpt.parent / "params.json").read_text())
    params[field] = value
    (tmp_path / "params.json").write_text(json.dumps(params))  # NaN is written as the literal NaN
    assert_one_line_error(cli(*generate_args(tmp_path / "model.pt", tok)), pattern)


@pytest.mark.parametrize("key,value", [("llama.attention.head_count", 0), ("llama.attention.head_count_kv", 0),
                                       ("llama.attention.layer_norm_rms_epsilon", math.nan),
                                       ("llama.rope.freq_base", 0.0)])
def test_gguf_with_impossible_values(bare, tmp_path, key, value):
    import gguf

    path = write_gguf(bare[0], tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path, "r+")
    reader.fields[key].parts[-1][0] = value  # the value's bytes, mapped from the file
    del reader
    assert_one_line_error(cli("generate", "--gguf-path", str(path), "--max-new-tokens", "3"), "bad model metadata")


def test_so_metadata_that_is_not_utf8(tmp_path):
    from torchchat.errors import UserError
    from torchchat.metadata import insert_so_metadata, read_so_metadata

    lib = tmp_path / "lib.so"
    shutil.copy("/bin/true", lib)  # any ELF file takes the block
    insert_so_metadata(lib, '{"arch": "llama", "name": "ok"}')
    assert read_so_metadata(lib) == '{"arch": "llama", "name": "ok"}'
    data = bytearray(lib.read_bytes())
    data[data.index(b'"ok"') + 1] = 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged shared library"):  # the block's checksum
        read_so_metadata(lib)
    at = data.index(b"TCHCRC32")
    data[at:at + 16] = bytes(16)  # as exported before the block had checksums
    lib.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not UTF-8"):
        read_so_metadata(lib)


def test_remove_from_a_cache_that_cannot_be_written(tmp_path, monkeypatch):
    from torchchat import registry
    from torchchat.errors import UserError

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    (tmp_path / "smollm2-135m").mkdir()

    def read_only(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(registry.os, "replace", read_only)
    with pytest.raises(UserError, match="cannot remove .*Read-only file system"):
        registry.remove("smollm2-135m")


def test_tokenizer_json_with_a_byte_order_mark(tmp_path):
    from tokenizers import Tokenizer

    from torchchat.registry import model_dir
    from torchchat.tokenizer import load_tokenizer

    original = model_dir("smollm2-135m") / "tokenizer.json"
    if not original.exists():
        pytest.skip("SmolLM2 is not downloaded (scripts/setup.sh)")
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"\xef\xbb\xbf" + original.read_bytes())
    reference = Tokenizer.from_file(str(original))
    text = "Hello, world! <|im_end|>"
    assert load_tokenizer(path).encode(text, bos=False) == reference.encode(text, add_special_tokens=False).ids
    tool = ROOT / "cmake-out" / "tokenize"
    if tool.exists():
        p = subprocess.run([str(tool), str(path), "text", text], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert [int(i) for i in p.stdout.split()] == reference.encode(text, add_special_tokens=False).ids


class NotATensor:
    pass


def test_checkpoint_with_python_objects_is_refused_without_torchs_advice(bare, tmp_path):
    model, _, tok = bare
    from tiny_models import meta_state_dict

    torch.save({**meta_state_dict(model), "extra": NotATensor()}, tmp_path / "model.pt")
    shutil.copy(bare[1].parent / "params.json", tmp_path / "params.json")
    p = cli(*generate_args(tmp_path / "model.pt", tok))
    assert_one_line_error(p, "holds Python objects besides tensors")
    assert "weights_only" not in p.stderr


@pytest.mark.parametrize("where", ["missing/out.json", "."])
def test_eval_output_path_is_checked_before_the_evaluation(bare, tmp_path, where):
    _, ckpt, tok = bare
    p = cli("eval", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok),
            "--output-json", str(tmp_path / where))
    assert_one_line_error(p, "--output-json")
    assert "eval:" not in p.stderr  # no progress bar: nothing was evaluated


@pytest.mark.parametrize("flag", ["--output-dso-path", "--output-pte-path"])
def test_export_output_path_is_checked_before_loading(bare, tmp_path, flag):
    _, ckpt, tok = bare
    p = cli("export", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), flag,
            str(tmp_path / "missing" / "model.so"))
    assert_one_line_error(p, f"{flag} ")
    assert "Loading" not in p.stderr


def test_rewritten_outputs_keep_their_mode(tmp_path):
    from torchchat.eval import write_json_atomic

    old = tmp_path / "old.json"
    old.write_text("{}")
    old.chmod(0o644)
    write_json_atomic(old, {"a": 1})
    assert json.loads(old.read_text()) == {"a": 1} and (old.stat().st_mode & 0o777) == 0o644
    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "new.json", {"b": 2})
    finally:
        os.umask(umask)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
