"""What quantization costs in quality: perplexity per --quantize scheme, relative to fp32.

    python3 bench/quant_quality.py                       # eager; smollm2-135m and the trained test model
    python3 bench/quant_quality.py --backends eager,aoti,et --models trained

Two models: the default (smollm2-135m, whose weights are already Q4_1, which flatters
requantization) and tests/python/trained_llama.py's small llama trained on public-domain text
(a real floating-point weight distribution). Each row is one scheme; the perplexity is over the
default corpus (torchchat/data, `eval`'s default) in windows of 256 tokens, and for the trained
model also over its held-out text (the book it did not see). Columns per backend: eager runs the
quantized model in PyTorch; aoti/et export it (AOT Inductor .so / ExecuTorch .pte, minutes each
for smollm2) and evaluate the artifact. A scheme a backend refuses is "-". Prints one markdown table
and records it, with this machine, in bench/results/ (results.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import results  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "python"))

from torchchat.errors import UserError  # noqa: E402

SCHEMES = {
    "fp32": None,
    "linear:int8": {"linear:int8": {"groupsize": 0}},
    "linear:int8 g32": {"linear:int8": {"groupsize": 32}},
    "linear:int8 g64": {"linear:int8": {"groupsize": 64}},
    "linear:int8 int8 activations": {"linear:int8": {"groupsize": 0, "activations": "int8"}},
    "linear:int8 g32 int8 activations": {"linear:int8": {"groupsize": 32, "activations": "int8"}},
    "linear:int4 g32": {"linear:int4": {"groupsize": 32}},
    "linear:int4 g32 output int4": {"linear:int4": {"groupsize": 32, "output": "int4"}},
    "linear:int4 g32 int8 activations": {"linear:int4": {"groupsize": 32, "activations": "int8"}},
    "linear:int4 g32 output int4 int8 activations": {"linear:int4": {"groupsize": 32, "output": "int4",
                                                                     "activations": "int8"}},
    "linear:int4 g128": {"linear:int4": {"groupsize": 128}},
    "linear:a8w4dq g32": {"linear:a8w4dq": {"groupsize": 32}},
    "embedding:int8": {"embedding:int8": {"groupsize": 0}},
    "embedding:int4 g32": {"embedding:int4": {"groupsize": 32}},
    "bf16": {"precision": {"dtype": "bf16"}},
}
WINDOW = 256


def model_args(model: str, quantize) -> SimpleNamespace:
    """What the CLI's argparse would give load_model for this model and scheme."""
    ns = SimpleNamespace(model=None, checkpoint_path=None, gguf_path=None, params_path=None, tokenizer_path=None,
                         dtype="fp32", max_seq_length=None, quantize=json.dumps(quantize) if quantize else None)
    if model == "smollm2-135m":
        ns.model = model
    else:
        ns.checkpoint_path, ns.tokenizer_path = str(Path(model) / "model.pt"), str(Path(model) / "tokenizer.model")
    return ns


def decoder_for(model: str, quantize, backend: str, workdir: Path):
    """(decoder, tokenizer, info) for one model, scheme and backend."""
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    loaded = load_model(model_args(model, quantize), backend)
    if backend == "eager":
        return EagerDecoder(loaded.model, WINDOW), loaded.tokenizer, loaded.info
    from torchchat.export import export_model
    from torchchat.backends.aoti import AOTIDecoder

    # A new name each time: dlopen hands back an already loaded library of the same path.
    path = Path(tempfile.mkstemp(dir=workdir, suffix=".so" if backend == "aoti" else ".pte")[1])
    path.unlink()
    export_model(loaded.model, loaded.info, loaded.dtype, WINDOW,
                 path if backend == "aoti" else None, None, path if backend == "et" else None)
    if backend == "aoti":
        return AOTIDecoder(path), loaded.tokenizer, loaded.info
    from torchchat.backends.executorch import PTEDecoder

    return PTEDecoder(path), loaded.tokenizer, loaded.info


def measure(model: str, quantize, backend: str, corpora: dict[str, str], workdir: Path) -> dict[str, float]:
    from torchchat.eval import perplexity

    try:
        decoder, tokenizer, info = decoder_for(model, quantize, backend, workdir)
    except UserError as e:
        print(f"  {backend}: refused: {e}", file=sys.stderr)
        return {}
    return {name: perplexity(decoder, tokenizer, info, text, WINDOW, progress=False)["perplexity"]
            for name, text in corpora.items()}


def quality_table(models: dict[str, dict[str, str]], backends: list[str], schemes: dict,
                  workdir: Path) -> tuple[list[str], list[dict], dict]:
    """models: {model: {corpus name: text}} -> (columns, rows, {model: {corpus: {scheme: {backend: ppl}}}})."""
    results_by_model: dict = {}
    for model, corpora in models.items():
        for scheme, quantize in schemes.items():
            for backend in backends:
                print(f"{Path(model).name} {scheme} {backend}", file=sys.stderr)
                got = measure(model, quantize, backend, corpora, workdir)
                for corpus in corpora:
                    results_by_model.setdefault(model, {}).setdefault(corpus, {}).setdefault(scheme, {})[backend] = \
                        got.get(corpus)
    columns = ["model", "corpus", "scheme"] + [c for b in backends for c in (f"{b} ppl", f"{b} vs fp32 %")]
    rows = []
    for model, by_corpus in results_by_model.items():
        for corpus, by_scheme in by_corpus.items():
            base = by_scheme.get("fp32", {})
            for scheme, by_backend in by_scheme.items():
                row = {"model": label(model), "corpus": corpus, "scheme": scheme}
                for b in backends:
                    ppl, ref = by_backend.get(b), base.get(b) or base.get("eager")
                    # "-": refused by this backend
                    row[f"{b} ppl"] = "-" if ppl is None else round(ppl, 3)
                    row[f"{b} vs fp32 %"] = "-" if ppl is None or not ref else round(100 * (ppl / ref - 1), 2)
                rows.append(row)
    return columns, rows, results_by_model


def label(model: str) -> str:
    return model if model == "smollm2-135m" else "trained (tests)"


def trained_model(log=None) -> Path:
    from trained_llama import cached

    return cached(Path(tempfile.gettempdir()) / "torchchat-tests", log=log)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m,trained", help="smollm2-135m and/or trained")
    p.add_argument("--backends", default="eager", help="eager[,aoti][,et]")
    p.add_argument("--schemes", help=f"subset of: {', '.join(SCHEMES)} (comma-separated; default all)")
    p.add_argument("--output-json", help="also write the figures here")
    results.add_argument(p)
    args = p.parse_args()
    from torchchat.eval import DEFAULT_CORPUS, write_json_atomic

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    schemes = SCHEMES if not args.schemes else {s.strip(): SCHEMES[s.strip()] for s in args.schemes.split(",")}
    if "fp32" not in schemes:
        schemes = {"fp32": None, **schemes}
    default = DEFAULT_CORPUS.read_text(encoding="utf-8")
    models = {}
    for m in args.models.split(","):
        if m == "trained":
            folder = trained_model(log=lambda s: print(f"training the test model: {s}", file=sys.stderr))
            models[str(folder)] = {"default": default, "held-out": (folder / "heldout.txt").read_text(encoding="utf-8")}
        else:
            models[m] = {"default": default}
    with tempfile.TemporaryDirectory() as tmp:
        columns, rows, figures = quality_table(models, backends, schemes, Path(tmp))
    settings = {"window": WINDOW, "backends": ",".join(backends)}
    variant = None if len(models) > 1 else label(next(iter(models))).split(" ")[0]  # smollm2-135m or trained
    run = results.record("quant_quality", columns, rows, settings=settings, variant=variant, directory=args.results)
    print(results.render(run))
    if args.output_json:
        write_json_atomic(Path(args.output_json), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
