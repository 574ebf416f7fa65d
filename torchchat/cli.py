"""The command line: `python3 torchchat.py download|list|where|remove|generate|chat|eval|export ...`.

Every command reports bad input as one line on stderr and a non-zero exit status. Each `cmd_*`
checks its options once, before the slow part (loading a model), then calls the library.
The commands import the library inside their functions: `--help`, `list` and `download`
then start without importing torch, which takes seconds.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from torchchat import target_cpu
from torchchat.errors import UserError
from torchchat.output import check_output_path

DEFAULT_MODEL = "smollm2-135m"


def add_model_args(p: argparse.ArgumentParser,
                   max_seq_help: str = "context to allocate (default: what the prompt needs)") -> None:
    p.add_argument("model", nargs="?", help=f"registry alias, e.g. {DEFAULT_MODEL} (see `list`)")
    p.add_argument("--checkpoint-path", help="weights: .pt (llama2.c/torchchat), consolidated.*.pth, *.safetensors")
    p.add_argument("--params-path", help="params.json (Meta) or config.json (Hugging Face) for --checkpoint-path")
    p.add_argument("--gguf-path", help="weights and tokenizer in one GGUF file")
    p.add_argument("--tokenizer-path", help="tokenizer.model (SentencePiece or tiktoken) or tokenizer.json")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="weights and activations (--quantize's precision wins over it)")
    p.add_argument("--quantize", metavar="JSON|FILE",
                   help='e.g. \'{"linear:int4": {"groupsize": 32}}\'; schemes: linear:int8, linear:int4, '
                        'linear:a8w4dq, embedding:int8, embedding:int4, precision (see README)')
    p.add_argument("--max-seq-length", type=int, help=max_seq_help)


def add_exported_args(p: argparse.ArgumentParser) -> None:
    # Run an exported artifact instead of a checkpoint (validation of what the native runner runs).
    p.add_argument("--dso-path", help="AOT Inductor shared library from `export --output-dso-path`")
    p.add_argument("--aoti-package-path", help="AOT Inductor package from `export --output-aoti-package-path`")
    p.add_argument("--pte-path", help="ExecuTorch program from `export --output-pte-path` (runs in ExecuTorch's Python runtime)")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start, fast tokens)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchchat.py", description="Run llama-family models; export them for the native runners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="fetch a model into the cache")
    p.add_argument("model")
    sub.add_parser("list", help="list known models and whether they are downloaded")
    p = sub.add_parser("where", help="print a downloaded model's cache folder")
    p.add_argument("model")
    p = sub.add_parser("remove", help="delete a downloaded model from the cache")
    p.add_argument("model")

    p = sub.add_parser("generate", help="continue a prompt")
    add_model_args(p)
    add_exported_args(p)
    add_sampling_args(p, max_new_tokens=200)
    p.add_argument("--prompt", default="Hello, my name is")
    p.add_argument("--num-samples", type=int, default=1)

    p = sub.add_parser("chat", help="interactive multi-turn chat on stdin")
    add_model_args(p)
    add_exported_args(p)
    add_sampling_args(p, max_new_tokens=512)
    p.add_argument("--system-prompt", help="system message that opens the conversation")

    p = sub.add_parser("eval", help="perplexity over a text corpus (default: a public-domain text shipped here)")
    add_model_args(p, max_seq_help=f"window length in tokens (default {EVAL_WINDOW}, at most the model's context)")
    add_exported_args(p)
    p.add_argument("--text-file", help="corpus to score (UTF-8 text)")
    p.add_argument("--tasks", help="lm-eval harness tasks instead of perplexity: NAME[,NAME...], a name "
                                   "or a task .yaml file (its dataset must be on local disk offline)")
    p.add_argument("--limit", type=int, help="score at most this many windows (with --tasks: examples per task)")
    p.add_argument("--output-json", help="also write the results here as JSON")

    p = sub.add_parser("export", help="compile a model ahead of time for the native runner (aoti_run)")
    # The exported KV cache is fixed, and ExecuTorch's attention reads all of it every token
    # (AOT Inductor's only the filled positions): 2048 covers chats and keeps decode fast.
    add_model_args(p, max_seq_help="context (KV cache size) of the exported model; default min(model context, 2048): "
                                   "an ExecuTorch program's attention reads the whole cache each token")
    p.add_argument("--output-dso-path", help="write an AOT Inductor shared library (.so)")
    p.add_argument("--output-aoti-package-path", help="write an AOT Inductor package (.pt2)")
    p.add_argument("--output-pte-path", help="write an ExecuTorch program (.pte, XNNPACK) for et_run")
    p.add_argument("--target-cpu", choices=target_cpu.CHOICES, default=target_cpu.DEFAULT,
                   help="CPUs the AOT Inductor code runs on: avx2 (default: any x86-64 from Haswell on), "
                        "avx512, or native (this machine's kind only); our kernels choose theirs at run time")
    return parser


def cmd_registry(args) -> None:
    from torchchat import registry  # light, but `--help` needs it not at all

    if args.command == "download":
        print(registry.download(args.model))
    elif args.command == "where":
        print(registry.where(args.model))
    elif args.command == "remove":
        print(f"removed {registry.remove(args.model)}")
    else:
        rows = registry.list_models()
        width = max(len(r["alias"]) for r in rows)
        for r in rows:
            mark = "downloaded" if r["downloaded"] else ""
            print(f"{r['alias']:<{width}}  {mark:<10}  {r['description']}")


EVAL_WINDOW = 256  # tokens per eval window: torchchat's wikitext default is of this order
CHAT_CONTEXT = 2048  # default chat context: attention reads the whole cache every token


def prepare(args):
    """Validate the sampling options, then load the model (bad options fail before the slow part)."""
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.generate import SamplingConfig, Sampler
    from torchchat.load import load_model

    config = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    exported = exported_path(args)
    loaded = load_exported_model(args, exported) if exported else load_model(args)
    return loaded, Sampler(config, vocab_size=loaded.tokenizer.vocab_size)


def exported_path(args) -> Optional[str]:
    paths = [p for p in (getattr(args, a, None) for a in ("dso_path", "aoti_package_path", "pte_path")) if p]
    if len(paths) > 1:
        raise UserError("give one of --dso-path, --aoti-package-path and --pte-path")
    return paths[0] if paths else None


def load_exported_model(args, path: str):
    """An exported artifact stands in for the weights; its context is fixed at export."""
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.backends.aoti import AOTIDecoder
    from torchchat.backends.executorch import PTEDecoder
    from torchchat.load import LoadedModel, load_exported

    if getattr(args, "quantize", None):
        raise UserError(f"--quantize does not apply to {path}: quantization is fixed at export (pass it to `export`)")
    decoder_class = PTEDecoder if getattr(args, "pte_path", None) else AOTIDecoder
    decoder, tokenizer, info = load_exported(path, args.tokenizer_path, args.model, decoder_class=decoder_class)
    if args.max_seq_length is not None and args.max_seq_length != info.max_seq_len:
        raise UserError(f"{path} was exported with a context of {info.max_seq_len}; re-export to change it")
    return LoadedModel(decoder, tokenizer, info)


def make_decoder(args, loaded, needed: int):
    """Size the KV cache: --max-seq-length if given, else what the job needs (within the model's context)."""
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.backends.eager import EagerDecoder

    if not hasattr(loaded.model, "setup_caches"):  # an exported artifact: its KV cache is built in
        return loaded.model
    context = loaded.info.max_seq_len
    if args.max_seq_length is not None:
        if not 1 <= args.max_seq_length <= context:
            raise UserError(f"--max-seq-length must be in [1, {context}], got {args.max_seq_length}")
        context = args.max_seq_length
    else:
        context = min(context, needed)
    return EagerDecoder(loaded.model, context, compile=getattr(args, "compile", False), kernels=True)


def cmd_generate(args) -> None:
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.generate import Stats, TextStream, generate

    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    loaded, sampler = prepare(args)
    tok, info = loaded.tokenizer, loaded.info
    prompt = tok.encode(args.prompt, bos=info.add_bos)
    decoder = make_decoder(args, loaded, needed=len(prompt) + args.max_new_tokens)
    for i in range(args.num_samples):
        sys.stdout.write(args.prompt)
        stream = TextStream(tok, context=prompt, skip=info.stop_ids)
        stats = Stats()
        generate(decoder, prompt, args.max_new_tokens, sampler, info.stop_ids, on_token=stream, stats=stats)
        stream.finish()
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(f"[sample {i + 1}] {stats.summary()}", file=sys.stderr)


def cmd_chat(args) -> None:
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.chat import chat_loop

    loaded, sampler = prepare(args)
    decoder = make_decoder(args, loaded, needed=CHAT_CONTEXT)
    chat_loop(decoder, loaded.tokenizer, loaded.info, sampler, args.max_new_tokens, system=args.system_prompt)


def load_for_eval(args, default_window: int):
    """(loaded, decoder, window) for eval: here --max-seq-length is the window, which an
    exported model's fixed context only bounds."""
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.load import load_model

    window, args.max_seq_length = args.max_seq_length, None
    exported = exported_path(args)
    loaded = load_exported_model(args, exported) if exported else load_model(args)
    window = window or min(default_window, loaded.info.max_seq_len)
    if not 2 <= window <= loaded.info.max_seq_len:
        raise UserError(f"--max-seq-length must be in [2, {loaded.info.max_seq_len}], got {window}")
    return loaded, make_decoder(args, loaded, needed=window), window


def cmd_eval(args) -> None:
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat import eval as evaluation
    from torchchat.quantize import describe

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.output_json:
        check_output_path(Path(args.output_json), "--output-json")  # before the evaluation, not after
    if args.tasks is not None:
        return cmd_eval_tasks(args)
    path = Path(args.text_file) if args.text_file else evaluation.DEFAULT_CORPUS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --text-file {path}: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}")
    loaded, decoder, window = load_for_eval(args, EVAL_WINDOW)
    results = evaluation.perplexity(decoder, loaded.tokenizer, loaded.info, text, window, args.limit)
    results["corpus"] = str(path)
    if loaded.info.quantize:  # from --quantize, or from the artifact's metadata
        results["quantize"] = loaded.info.quantize
        print(f"quantized: {describe(loaded.info.quantize)}")
    print(evaluation.format_table(results))
    if args.output_json:
        evaluation.write_json_atomic(Path(args.output_json), results)


TASK_CONTEXT = 2048  # default context for --tasks: enough for few-shot prompts, small enough to stay quick


def cmd_eval_tasks(args) -> None:
    """`eval --tasks`: lm-eval harness tasks over the same decoders as perplexity."""
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat import eval as evaluation
    from torchchat import lm_eval_adapter

    if args.text_file:
        raise UserError("--text-file is the perplexity corpus; --tasks brings its own data (give one of them)")
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    if not names:
        raise UserError("--tasks: name at least one task")
    manager = lm_eval_adapter.resolve_tasks(names)  # before the slow model load
    # --max-seq-length is the longest request (context + continuation) the model sees.
    loaded, decoder, window = load_for_eval(args, TASK_CONTEXT)
    lm = lm_eval_adapter.make_lm(decoder, loaded.tokenizer, loaded.info, window)
    results = lm_eval_adapter.run_tasks(lm, manager, names, args.limit)
    print(lm_eval_adapter.format_table(results))
    if args.output_json:
        evaluation.write_json_atomic(Path(args.output_json), {"tasks": results, "limit": args.limit,
                                                              "max_seq_length": window,
                                                              "quantize": loaded.info.quantize})


def cmd_export(args) -> None:
    # Imported here, not above: `--help`, `list` and `download` start without torch (seconds).
    from torchchat.export import DEFAULT_MAX_SEQ, export_model, phase
    from torchchat.load import load_model, quantize_spec

    # A plain kill (SIGTERM) ends the export like Ctrl-C, so staged files are cleaned up too.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    so_path, pt2_path = args.output_dso_path, args.output_aoti_package_path
    pte_path = getattr(args, "output_pte_path", None)
    if not so_path and not pt2_path and not pte_path:
        raise UserError("give --output-dso-path model.so, --output-aoti-package-path model.pt2 and/or --output-pte-path model.pte")
    if pt2_path and not pt2_path.endswith(".pt2"):
        raise UserError(f"--output-aoti-package-path must end in .pt2, got {pt2_path}")
    for flag, path in (("--output-dso-path", so_path), ("--output-aoti-package-path", pt2_path),
                       ("--output-pte-path", pte_path)):
        if path:
            check_output_path(Path(path), flag)  # before minutes of loading and lowering
    # Quantized weights take a different form per backend (torchchat/quantize.py).
    backend = "et" if pte_path else "aoti"
    if getattr(args, "quantize", None) and pte_path and (so_path or pt2_path):
        raise UserError("--quantize: export AOT Inductor and ExecuTorch artifacts one at a time "
                        "(quantized weights take a different form for each)")
    spec = quantize_spec(args, backend)  # before the slow part
    with phase("Loading the model"):
        loaded = load_model(args, backend, spec)
    max_seq = args.max_seq_length or min(loaded.info.max_seq_len, DEFAULT_MAX_SEQ)
    export_model(loaded.model, loaded.info, loaded.dtype, max_seq,
                 Path(so_path) if so_path else None, Path(pt2_path) if pt2_path else None,
                 Path(pte_path) if pte_path else None, args.target_cpu)


# What a failed write of the output looks like.
OUTPUT_ERRORS = (errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EFBIG, errno.EIO)


def valid_text(text: str) -> str:
    """Text from the command line whose bytes are not UTF-8 (Python keeps them as surrogates) with
    each ill-formed sequence replaced by U+FFFD, as the runners do."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("prompt", "system_prompt"):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, valid_text(getattr(args, name)))
    try:
        if args.command in ("download", "list", "where", "remove"):
            cmd_registry(args)
        elif args.command == "generate":
            cmd_generate(args)
        elif args.command == "chat":
            cmd_chat(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "export":
            cmd_export(args)
        sys.stdout.flush()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in OUTPUT_ERRORS:
            raise
        # Output that cannot be written (a full disk, a closed pipe) is a failure: the words are
        # lost. Point stdout at /dev/null so that the interpreter's own flush at exit is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: cannot write {e.filename or 'the output'}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0
