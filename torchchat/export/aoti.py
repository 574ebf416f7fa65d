"""AOT Inductor: compile the program ahead of time into
- a .so: `torch._inductor.aot_compile`, a bare shared library (AOTIModelContainerRunnerCpu);
- a .pt2: `torch._inductor.aoti_compile_and_package`, a zip package (AOTIModelPackageLoader).
The model's metadata (torchchat/metadata.py) goes inside either file, and where every constant
is a plain tensor we store the constants ourselves (torchchat/mapped_constants.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from torchchat import kernels, mapped_constants, metadata
from torchchat.errors import UserError
from torchchat.export.staging import staged_output

# Inductor settings for CPU inference (measured on SmolLM2-135M, 2 cores: 19 -> 53 tok/s decode).
# Freezing turns the weights into constants, which lets max-autotune choose inductor's own
# C++ GEMM/GEMV templates (prepacked weights) where they beat ATen; ATen's batch-1 matmul
# streams weights at a third of the memory bandwidth here.
INDUCTOR_CONFIGS = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    # Autotuning prints a table per GEMM; our phase messages are the progress report.
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def inductor_configs(ep: torch.export.ExportedProgram) -> dict:
    """INDUCTOR_CONFIGS, with inductor's C++ GEMM templates as the only choice for fp32/bf16 GEMMs,
    and the C entry points of our kernels when the graph calls them.

    (With kernel_swaps.swap_float_linears, an fp32/bf16 transformer's linears all run our kernels, so no GEMM is
    left to autotune; the history below is why the templates were chosen before that.)

    One artifact serves prefill and decode, so each GEMM is autotuned once, at the example
    size (T = 2); there oneDNN wins some GEMMs that then run decode (T = 1) slower than the
    C++ template. Measured on SmolLM2-135M, 2 threads, side by side: templates only, decode
    40.5 vs 34 tok/s and 128-token prefill 415 vs 540 tok/s. Decode is what a chat feels, so
    fp32 takes the templates. So does bf16: the same speed as with oneDNN among the choices
    (SmolLM2, AMD AVX-512, alternated twice: pp128 454-494 vs 472-492 tok/s, tg 59-64 vs 56-60),
    and its weights become plain tensors we can map at load (oneDNN's packed ones are opaque):
    load 0.006 vs 0.15-0.62 s, peak RSS 428 vs 754 MB. fp16 keeps ATen: not measured here.
    """
    configs = dict(INDUCTOR_CONFIGS)
    floats = {t.dtype for t in (*ep.state_dict.values(), *ep.constants.values())
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float16}
    if floats <= {torch.float32, torch.bfloat16}:  # (fp16 tensors of int4 scales are not activations)
        configs["max_autotune_gemm_backends"] = "CPP"
    ours = {n.target for n in ep.graph.nodes if n.op == "call_function"
            and getattr(n.target, "namespace", None) == "torchchat"}
    if ours:
        # Called directly from the model's C++ (no dispatcher): kernels/torch_ops.cpp.
        configs["aot_inductor.custom_ops_to_c_shims"] = kernels.aoti_c_shims()
    return configs


def compile_configs(ep: torch.export.ExportedProgram) -> tuple[dict, bool]:
    """(inductor configs, whether we store the constants ourselves: torchchat/mapped_constants.py).

    We do where every constant is a plain tensor: with ATen among the GEMM choices (fp16)
    oneDNN may keep packed weights in its own opaque format, so those keep AOTI's own storage,
    as does a configuration asking for AOTI's mmap of weights appended to the library."""
    configs = inductor_configs(ep)
    mapped = configs["max_autotune_gemm_backends"] == "CPP" and not configs.get("aot_inductor.force_mmap_weights")
    if mapped:
        configs["aot_inductor.package_constants_in_so"] = False
    return configs, mapped


def checked(constants: list) -> list:
    problem = mapped_constants.can_map(constants)
    if problem:
        raise UserError(f"cannot store the compiled model's constants: {problem}")
    return constants


def compile_so(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    with staged_output(out, ".so") as staged:
        options = {"aot_inductor.output_path": str(staged)}
        configs, mapped = compile_configs(ep)
        with mapped_constants.capture() as constants, torch.no_grad(), torch._inductor.config.patch(configs):
            produced = torch._inductor.aot_compile(ep.module(), ep.example_inputs[0], options=options)
        if Path(produced) != staged:
            shutil.move(produced, staged)
        metadata.insert_so_metadata(staged, meta_json)
        if mapped:
            mapped_constants.append_to_so(staged, checked(constants))


def compile_pt2(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    with staged_output(out, ".pt2") as staged:
        options = {"aot_inductor.metadata": {metadata.PT2_KEY: meta_json}}
        configs, mapped = compile_configs(ep)
        package = staged.with_name("inductor.pt2") if mapped else staged
        with mapped_constants.capture() as constants, torch.no_grad(), torch._inductor.config.patch(configs):
            torch._inductor.aoti_compile_and_package(ep, package_path=str(package), inductor_configs=options)
        if mapped:
            mapped_constants.write_pt2(package, staged, checked(constants))
