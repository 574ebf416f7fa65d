"""--quantize: parsing and bad input, each scheme against a plain-PyTorch reference, quantized
eager against fp32, and the same perplexity in eager, AOT Inductor and ExecuTorch.

References are written here from the schemes' definitions (quantize -> dequantize ->
F.linear / indexing), independently of torchchat/quantize.py and of torchao.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import cli  # noqa: E402
from tiny_models import tiny_llama2_files  # noqa: E402

from torchchat.errors import UserError  # noqa: E402
from torchchat.model import ModelArgs, Transformer  # noqa: E402
from torchchat.quantize import parse_quantize, quantize_model  # noqa: E402

INT8 = '{"linear:int8": {"groupsize": 0}}'
INT4 = '{"linear:int4": {"groupsize": 32}}'
INT4A8 = '{"linear:int4": {"groupsize": 32, "activations": "int8"}}'
INT8A8 = '{"linear:int8": {"groupsize": 0, "activations": "int8"}}'
A8W4 = '{"linear:a8w4dq": {"groupsize": 32}}'


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_inline_file_and_defaults(tmp_path):
    spec = {"linear:int4": {"groupsize": 64, "output": "int4", "activations": "int8"}, "embedding:int8": {"groupsize": 0},
            "precision": {"dtype": "bf16"}}
    assert parse_quantize(json.dumps(spec)) == spec
    (tmp_path / "q.json").write_text(json.dumps(spec))
    assert parse_quantize(str(tmp_path / "q.json")) == spec
    # Options left out take the scheme's default groupsize.
    assert parse_quantize('{"linear:a8w4dq": {}, "embedding:int4": {}}') == {
        "linear:a8w4dq": {"groupsize": 32}, "embedding:int4": {"groupsize": 32}}
    assert parse_quantize('{"linear:int4": {}}') == {"linear:int4": {"groupsize": 32, "output": "int8",
                                                                     "activations": "fp32"}}
    # linear:int8: per output channel by default, or groupwise.
    assert parse_quantize('{"linear:int8": {}}') == {"linear:int8": {"groupsize": 0, "activations": "fp32"}}
    for g in (32, 64, 128, 256):
        assert parse_quantize(json.dumps({"linear:int8": {"groupsize": g, "activations": "int8"}})) == {
            "linear:int8": {"groupsize": g, "activations": "int8"}}


@pytest.mark.parametrize("arg,pattern", [
    ('{"linear:int8": {"groupsize": 0}', "malformed JSON"),
    ("[1, 2]", "want a JSON object"),
    ('{"linear:int3": {"groupsize": 32}}', "unknown scheme 'linear:int3'"),
    ('{"linear:int4": {"groupsize": 48}}', "groupsize must be 32, 64, 128, 256, got 48"),
    ('{"linear:int8": {"groupsize": 48}}', "linear:int8 groupsize must be 0 (per output channel), 32, 64, 128, 256, got 48"),
    ('{"linear:int8": {"groupsize": 512}}', "linear:int8 groupsize must be 0 (per output channel), 32, 64, 128, 256, got 512"),
    ('{"linear:int8": {"groupsize": "64"}}', 'groupsize must be a non-negative integer, got "64"'),
    ('{"embedding:int8": {"groupsize": -1}}', "non-negative integer"),
    ('{"linear:int4": {"group_size": 32}}', "no option 'group_size'"),
    ('{"linear:int4": 32}', "takes an object of options"),
    ('{"linear:int4": {"output": "fp32"}}', 'output must be "int8" or "int4", got "fp32"'),
    ('{"linear:int4": {"activations": "int4"}}', 'activations must be "fp32" or "int8", got "int4"'),
    ('{"linear:int8": {"output": "int4"}}', "no option 'output' (it takes groupsize and activations)"),
    ('{"linear:int8": {"activations": "fp16"}}', 'linear:int8 activations must be "fp32" or "int8", got "fp16"'),
    ('{"linear:a8w4dq": {"activations": "int8"}}', "no option 'activations' (it takes groupsize)"),
    ('{"precision": {"dtype": "int8"}}', "precision dtype must be one of"),
    ('{"linear:int8": {}, "linear:int4": {}}', "give one linear scheme"),
    ("no/such/file.json", "neither JSON nor a file"),
])
def test_parse_rejects(arg, pattern):
    with pytest.raises(UserError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        parse_quantize(arg)


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints and the command line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama2_files(tmp_path_factory.mktemp("tiny_quantize"))


def model_flags(t) -> list[str]:
    return ["--checkpoint-path", str(t.ckpt), "--tokenizer-path", str(t.tok)]


@pytest.mark.parametrize("command,extra,pattern", [
    ("generate", ["--quantize", '{"linear:int8": '], "malformed JSON"),
    ("chat", ["--quantize", '{"linear:fp8": {}}'], "unknown scheme"),
    ("eval", ["--quantize", '{"linear:int4": {"groupsize": 100}}'], "groupsize must be"),
    ("eval", ["--quantize", '{"linear:int8": {"groupsize": 16}}'], "linear:int8 groupsize must be 0 (per output channel), 32"),
    # 96 does not divide the tiny model's width of 256.
    ("eval", ["--quantize", '{"embedding:int8": {"groupsize": 96}}'],
     "groupsize 96 does not divide tok_embeddings's input dimension 256"),
    ("export", ["--quantize", INT8, "--dtype", "bf16", "--output-pte-path", "m.pte"],
     "ExecuTorch runs linear:int8 in fp32 only, not bf16"),
    ("export", ["--quantize", '{"linear:int4": {"groupsize": 32}, "precision": {"dtype": "fp16"}}',
                "--output-pte-path", "m.pte"], "ExecuTorch runs linear:int4 in fp32 only, not fp16"),
    ("export", ["--quantize", A8W4, "--output-dso-path", "m.so"], "AOT Inductor cannot run linear:a8w4dq"),
    ("export", ["--quantize", INT4A8, "--dtype", "bf16", "--output-pte-path", "m.pte"],
     "ExecuTorch runs linear:int4 in fp32 only, not bf16"),
    ("export", ["--quantize", A8W4, "--output-dso-path", "m.so", "--output-pte-path", "m.pte"], "one at a time"),
    ("eval", ["--quantize", INT8, "--dso-path", "model.so"], "quantization is fixed at export"),
    ("generate", ["--quantize", INT8, "--pte-path", "model.pte"], "quantization is fixed at export"),
])
def test_cli_bad_input_is_one_line(tiny, tmp_path, capsys, monkeypatch, command, extra, pattern):
    monkeypatch.chdir(tmp_path)
    p = cli(command, *model_flags(tiny), *extra, capsys=capsys)  # in this process, in tmp_path
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: --quantize"), p.stderr
    assert pattern in p.stderr
    assert not list(tmp_path.iterdir())  # nothing exported


def test_int8_activations_need_widths_in_blocks_of_32():
    model = Transformer(ModelArgs(dim=256, n_layers=1, n_heads=4, vocab_size=64, hidden_dim=336, max_seq_len=16))
    with pytest.raises(UserError, match=r"linear:int8 with int8 activations block size 32 does not divide "
                                        r"layers.0.feed_forward.w2's input dimension 336"):
        quantize_model(model, parse_quantize(INT8A8), "eager")
    quantize_model(model, parse_quantize(INT8), "eager")  # fp32 activations take any width


@pytest.mark.parametrize("scheme", ["linear:int4", "linear:int8"])
def test_indivisible_linear_groupsize_names_the_layer(scheme):
    model = Transformer(ModelArgs(dim=256, n_layers=1, n_heads=4, vocab_size=64, hidden_dim=320, max_seq_len=16))
    with pytest.raises(UserError, match=rf"{scheme} groupsize 128 does not divide layers.0.feed_forward.w2's input "
                                        r"dimension 320"):
        quantize_model(model, parse_quantize(json.dumps({scheme: {"groupsize": 128}})), "eager")


# ---------------------------------------------------------------------------------------------
# Each scheme against an independent reference


def groups(w, g):
    return w.reshape(w.shape[0], -1, g or w.shape[1])


def ref_int8_weight(w, g=0):  # symmetric, per output channel (g = 0) or per group of g weights, [-127, 127]
    wg = groups(w, g)
    s = wg.abs().amax(-1, keepdim=True) / 127
    return (torch.round(wg / s).clamp(-127, 127) * s).reshape(w.shape)


def ref_int4_weight(w, g):  # asymmetric min/max per group: q in [0, 15], w = q * scale + min (both stored in fp16)
    wg = groups(w, g)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s, lo = ((hi - lo) / 15).half().float(), lo.half().float()
    return (torch.round((wg - lo) / s).clamp(0, 15) * s + lo).reshape(w.shape)


def ref_a8_block32(x):  # int8 activations per block of 32 values: s = max|x| / 127, round half to even
    xb = x.reshape(*x.shape[:-1], -1, 32)
    s = xb.abs().amax(-1, keepdim=True) / 127
    return (torch.where(s > 0, torch.round(xb / s), 0.0) * s).reshape(x.shape)


def ref_a8w4_weight(w, g):  # symmetric per group, q in [-8, 7], scale = max|w| / 7.5 (torchao's int4 range)
    wg = groups(w, g)
    s = wg.abs().amax(-1, keepdim=True) / 7.5
    return (torch.round(wg * (1 / s)).clamp(-8, 7) * s).reshape(w.shape)


def ref_a8_activation(x):  # asymmetric int8 per token, range widened to include 0
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 255
    zero = (-128 - torch.round(lo / s)).clamp(-128, 127)
    return ((torch.round(x / s) + zero).clamp(-128, 127) - zero) * s


def ref_embedding_table(w, bits, g):  # symmetric per group, [-qmax, qmax]
    qmax = 127 if bits == 8 else 7
    wg = groups(w, g)
    s = wg.abs().amax(-1, keepdim=True) / qmax
    return (torch.round(wg / s).clamp(-qmax, qmax) * s).reshape(w.shape)


class Pair(torch.nn.Module):
    def __init__(self, vocab=96, dim=256, out=160):
        super().__init__()
        self.emb, self.lin = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, out, bias=False)


LINEAR_CASES = [
    (INT8, lambda x, w: F.linear(x, ref_int8_weight(w))),
    ('{"linear:int8": {"groupsize": 32}}', lambda x, w: F.linear(x, ref_int8_weight(w, 32))),
    ('{"linear:int8": {"groupsize": 128}}', lambda x, w: F.linear(x, ref_int8_weight(w, 128))),
    (INT4, lambda x, w: F.linear(x, ref_int4_weight(w, 32))),
    ('{"linear:int4": {"groupsize": 128}}', lambda x, w: F.linear(x, ref_int4_weight(w, 128))),
    (INT4A8, lambda x, w: F.linear(ref_a8_block32(x), ref_int4_weight(w, 32))),
    (INT8A8, lambda x, w: F.linear(ref_a8_block32(x), ref_int8_weight(w))),
    ('{"linear:int8": {"groupsize": 64, "activations": "int8"}}',
     lambda x, w: F.linear(ref_a8_block32(x), ref_int8_weight(w, 64))),
    ('{"linear:int4": {"groupsize": 64, "activations": "int8"}}',
     lambda x, w: F.linear(ref_a8_block32(x), ref_int4_weight(w, 64))),
    (A8W4, lambda x, w: F.linear(ref_a8_activation(x), ref_a8w4_weight(w, 32))),
    ('{"linear:a8w4dq": {"groupsize": 64}}', lambda x, w: F.linear(ref_a8_activation(x), ref_a8w4_weight(w, 64))),
]


@pytest.mark.parametrize("spec,reference", LINEAR_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_linear_matches_reference(spec, reference):
    torch.manual_seed(0)
    m = Pair()
    w = m.lin.weight.detach().clone()
    x = torch.randn(2, 7, 256)
    quantize_model(m, parse_quantize(spec), "eager")
    # Prompts (many tokens) and decode (one token): different tiles of the kernels.
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            got, want, exact = m.lin(xs), reference(xs, w), F.linear(xs, w)
        # Within float rounding of the reference, and far closer to it than to the float layer.
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
        assert (got - exact).abs().max() > 100 * (got - want).abs().max()


@pytest.mark.parametrize("bits,g", [(8, 0), (8, 64), (4, 32), (4, 0)])
def test_embedding_matches_reference(bits, g):
    torch.manual_seed(0)
    m = Pair()
    w = m.emb.weight.detach().clone()
    quantize_model(m, parse_quantize(json.dumps({f"embedding:int{bits}": {"groupsize": g}})), "eager")
    tokens = torch.tensor([[0, 5, 95, 5, 17]])
    with torch.no_grad():
        got = m.emb(tokens)
    want = ref_embedding_table(w, bits, g)[tokens]
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    assert (got - w[tokens]).abs().max() > 1e-3  # it did quantize
    assert m.emb.weight.element_size() * m.emb.weight.numel() == w.numel() * bits // 8


def tied_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=256, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=512,
                                  max_seq_len=32, tie_embeddings=True)).eval()
    assert model.output.weight is model.tok_embeddings.weight
    return model


@pytest.mark.parametrize("spec,kept", [(INT4, "tok_embeddings"), (A8W4, "tok_embeddings"),
                                       ('{"embedding:int4": {"groupsize": 32}}', "output")])
def test_tied_weights_are_untied_not_changed(spec, kept):
    model = tied_model()
    original = model.tok_embeddings.weight.detach().clone()
    quantize_model(model, parse_quantize(spec), "eager")
    other = getattr(model, kept).weight
    assert type(other) is torch.nn.Parameter and other.dtype == torch.float32
    assert torch.equal(other, original)
    model.setup_caches(32)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]), torch.arange(3))).all()


@pytest.mark.parametrize("activations,int4", [("fp32", "Int4Linear"), ("int8", "Int4A8Linear")])
@pytest.mark.parametrize("output", [None, "int8", "int4"])
def test_int4_output_layer_is_int8_unless_asked(output, activations, int4):
    model = tied_model()
    options = {"groupsize": 32, "activations": activations, **({"output": output} if output else {})}
    quantize_model(model, parse_quantize(json.dumps({"linear:int4": options})), "eager")
    int8 = "Int8A8Linear" if activations == "int8" else "Int8Linear"  # the activations as the other layers'
    assert type(model.output).__name__ == (int4 if output == "int4" else int8)
    assert type(model.layers[0].attention.wqkv).__name__ == int4
    assert type(model.layers[0].feed_forward.w13).__name__ == int4


def test_fused_projections_compute_the_same_as_separate():
    from torchchat.quantize import fuse_projections

    model = tied_model()
    tokens, pos = torch.tensor([[5, 9, 2, 77]]), torch.arange(4)
    model.setup_caches(32)
    with torch.no_grad():
        want = model(tokens, pos)
        fuse_projections(model)
        assert not hasattr(model.layers[0].attention, "wq") and not hasattr(model.layers[0].feed_forward, "w1")
        model.setup_caches(32)
        got = model(tokens, pos)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


# ---------------------------------------------------------------------------------------------
# Quantized eager against fp32 on a whole (tiny) model


def load(t, quantize=None, backend="eager"):
    from torchchat.load import load_model

    args = SimpleNamespace(model=None, checkpoint_path=str(t.ckpt), gguf_path=None, params_path=None,
                           tokenizer_path=str(t.tok), dtype="fp32", quantize=quantize)
    return load_model(args, backend)


# Stated tolerances: mean |logit error| relative to the fp32 logits' standard deviation, and
# the share of positions where greedy picks fp32's token. The tiny model's random weights are
# deliberately hot (tiny_models.py), which amplifies quantization noise: measured int8 0.05 /
# 88% (g32: 0.04 / 95%), int4 g32 0.44 / 35%, a8w4dq 0.54 / 27%. A broken layer (wrong scales, transposed
# weights) gives unrelated logits: error ~1.4 (sqrt 2) and ~0.2% agreement.
CLOSENESS = {INT8: (0.1, 0.8), '{"linear:int8": {"groupsize": 32}}': (0.1, 0.8), INT4: (0.7, 0.2), A8W4: (0.8, 0.15),
             INT4A8: (0.7, 0.2), INT8A8: (0.1, 0.8),
             '{"embedding:int8": {"groupsize": 0}}': (0.1, 0.8), '{"embedding:int4": {"groupsize": 32}}': (0.7, 0.2)}


@pytest.mark.parametrize("spec", list(CLOSENESS))
def test_quantized_eager_logits_close_to_fp32(tiny, spec):
    from torchchat.eval import DEFAULT_CORPUS

    rel_tol, agree = CLOSENESS[spec]
    fp, q = load(tiny), load(tiny, spec)
    assert q.info.quantize == parse_quantize(spec)
    ids = fp.tokenizer.encode(DEFAULT_CORPUS.read_text()[:600], bos=True)[:128]
    logits = []
    for m in (fp.model, q.model):
        m.setup_caches(128)
        with torch.no_grad():
            logits.append(m(torch.tensor([ids]), torch.arange(len(ids)))[0])
    a, b = logits
    rel = (a - b).abs().mean() / a.std()
    same = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert 0 < rel <= rel_tol and same >= agree, (rel.item(), same.item())


# ---------------------------------------------------------------------------------------------
# The same perplexity in eager, AOT Inductor (.so) and ExecuTorch (.pte)

BACKEND_CASES = [  # (spec, export flag, eval flag)
    ('{"linear:int4": {"groupsize": 32}, "embedding:int8": {"groupsize": 0}}', "--output-dso-path", "--dso-path"),
    ('{"linear:int8": {"groupsize": 0}, "embedding:int4": {"groupsize": 32}}', "--output-dso-path", "--dso-path"),
    ('{"linear:a8w4dq": {"groupsize": 32}, "embedding:int4": {"groupsize": 64}}', "--output-pte-path", "--pte-path"),
    ('{"linear:int4": {"groupsize": 32}, "embedding:int8": {"groupsize": 0}}', "--output-pte-path", "--pte-path"),
    ('{"linear:int4": {"groupsize": 32, "activations": "int8"}}', "--output-dso-path", "--dso-path"),
    ('{"linear:int4": {"groupsize": 32, "activations": "int8"}}', "--output-pte-path", "--pte-path"),
    (INT8A8, "--output-pte-path", "--pte-path"),
]


def eval_json(capsys, tmp_path, *flags) -> dict:
    out = tmp_path / f"ppl{len(list(tmp_path.iterdir()))}.json"
    p = cli("eval", *flags, "--max-seq-length", "64", "--limit", "4", "--output-json", out, capsys=capsys)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


@pytest.mark.export
@pytest.mark.parametrize("spec,export_flag,eval_flag", BACKEND_CASES, ids=["aoti-int4", "aoti-int8", "et-a8w4dq", "et-int4",
                                                                              "aoti-int4-a8", "et-int4-a8", "et-int8-a8"])
def test_same_perplexity_eager_and_exported(tiny, tmp_path, capsys, spec, export_flag, eval_flag):
    artifact = tmp_path / ("model.pte" if "pte" in export_flag else "model.so")
    p = cli("export", *model_flags(tiny), "--quantize", spec, "--max-seq-length", "64", export_flag, artifact,
            capsys=capsys)
    assert p.returncode == 0, p.stderr
    eager = eval_json(capsys, tmp_path, *model_flags(tiny), "--quantize", spec)
    exported = eval_json(capsys, tmp_path, "--tokenizer-path", str(tiny.tok), eval_flag, str(artifact))
    fp32 = eval_json(capsys, tmp_path, *model_flags(tiny))
    assert exported["quantize"] == eager["quantize"] == parse_quantize(spec)  # the metadata carries the scheme
    assert exported["perplexity"] != pytest.approx(fp32["perplexity"], rel=1e-4)  # quantization did something
    if "a8w4dq" not in spec:  # our kernels in both: the same math
        assert exported["perplexity"] == pytest.approx(eager["perplexity"], rel=0.005)
    else:
        # XNNPACK quantizes the activations with its own rounding, which on this random model (where
        # a8w4dq itself moves perplexity by ~8 %) shows as up to ~0.6 % depending on the CPU's
        # kernels: require the backends to agree within a tenth of the scheme's own effect.
        effect = abs(eager["perplexity"] - fp32["perplexity"])
        assert abs(exported["perplexity"] - eager["perplexity"]) <= 0.1 * effect, (fp32, eager, exported)


def test_precision_wins_over_dtype(tiny):
    from torchchat.load import load_model

    args = SimpleNamespace(model=None, checkpoint_path=str(tiny.ckpt), gguf_path=None, params_path=None,
                           tokenizer_path=str(tiny.tok), dtype="fp16",
                           quantize='{"precision": {"dtype": "bf16"}, "linear:int8": {"groupsize": 0}}')
    loaded = load_model(args)
    assert loaded.dtype == "bf16" and loaded.model.norm.weight.dtype == torch.bfloat16
    wq = loaded.model.layers[0].attention.wqkv
    assert type(wq).__name__ == "Int8Linear" and wq.codes()[0].dtype == torch.int8
    assert wq(torch.randn(1, 3, wq.in_features, dtype=torch.bfloat16)).dtype == torch.bfloat16
    loaded.model.setup_caches(16)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(torch.tensor([[1, 5, 9]]), torch.arange(3))).all()
