"""The package's layout: layers that import only downwards, no import circles, and every
function-local import saying why it is not at the top.

Layers, bottom to top (a module may import its own package and lower layers, nothing above):
  0  errors, quiet                                  one-line errors; optional libraries' noise
  1  model, metadata, mapped_constants, kernels,    the model, the artifact format, our kernels,
     output, target_cpu                             output files written whole, the CPU an artifact needs
  2  kernel_swaps                                   the model's float linears and attention on our kernels
  3  checkpoints, quantize, backends, export        weights in, weights changed, decoders, artifacts out
  4  tokenizer, registry, generate, chat_template   text <-> tokens, the model cache, the decode loop,
                                                    the model's own chat template
  5  load, chat, eval, lm_eval_adapter              named model -> ready model; what the commands do
  6  cli                                            the command line
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "torchchat"

LAYERS = [
    {"errors", "quiet"},
    {"model", "metadata", "mapped_constants", "kernels", "output", "target_cpu"},
    {"kernel_swaps"},
    {"checkpoints", "quantize", "backends", "export"},
    {"tokenizer", "registry", "generate", "chat_template"},
    {"load", "chat", "eval", "lm_eval_adapter"},
    {"cli"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The top-level piece of torchchat a module belongs to: torchchat.export.aoti -> export."""
    return module.split(".")[1] if module != "torchchat" else ""


def imports_of(module: str) -> list[tuple[str, int]]:
    """(torchchat module imported, line) for every import in the module, function-local ones included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from torchchat import kernels` imports the module torchchat.kernels.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rpartition(".")[0]  # import torchchat.a.b as x -> torchchat.a.b, or its package
            if name in MODULES and name != "torchchat":
                found.append((name, node.lineno))
    return found


GRAPH = {m: sorted({target for target, _ in imports_of(m)} - {m}) for m in MODULES}


def test_every_module_is_in_a_layer():
    assert {unit(m) for m in MODULES} - {""} == set(LAYER_OF)


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} (layer {LAYER_OF[unit(m)]}) imports {t} (layer {LAYER_OF[unit(t)]})"
              for m, targets in GRAPH.items() if m != "torchchat" for t in targets
              if unit(t) != unit(m) and LAYER_OF[unit(t)] >= LAYER_OF[unit(m)]]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, list[str]]):
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in graph:
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_function_local_imports_say_why():
    """A local import has a comment on its line, or above it (over a run of imports)."""
    silent = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                i = node.lineno - 1
                while i >= 0 and "#" not in lines[i] and lines[i].strip().startswith(("import ", "from ")):
                    i -= 1
                if i < 0 or "#" not in lines[i]:
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, "function-local imports without a reason:\n" + "\n".join(silent)


def test_each_module_imports_alone():
    """Each module imported first, in a fresh interpreter, with no torchchat module loaded before it.

    One interpreter for all: before each module, every torchchat module is dropped from
    sys.modules, so the module and everything of ours it pulls in run from scratch in its
    own order (a circle fails there); third-party libraries stay loaded, which only saves time."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'torchchat' or m.startswith('torchchat.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize("module", ["torchchat.cli", "torchchat.registry"])
def test_light_modules_do_not_import_torch(module):
    """`--help`, `list` and `download` start without torch (seconds to import)."""
    result = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
