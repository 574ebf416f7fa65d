"""libtorchchat's C API driven through ctypes (tc_ctypes.py), each scenario in a process of its
own, on a tiny llama3-style model exported as an AOT Inductor .so and an ExecuTorch .pte.

Exactness: greedy tokens through the C API equal aoti_run's and et_run's; two sessions on two
threads give the tokens each gives alone; a session saved, loaded in a new process and
continued gives the tokens of the uninterrupted one. Bad input: a status and one line each.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import CONTEXT, PROMPTS, SYSTEM, USER, Exported, aoti_run, et_run, fed_tokens, shared_folder  # noqa: E402

LIBRARY = ROOT / "cmake-out" / "libtorchchat.so"
HOST = Path(__file__).resolve().parent / "tc_ctypes.py"
MESSAGES = [USER, "And the second tallest?", "Thank you. Why?"]
FORMATS = ["so", "pte"]

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Exported:
    if not LIBRARY.exists():
        pytest.skip(f"{LIBRARY} is not built (scripts/build_native.sh aoti)")
    return Exported(shared_folder(tmp_path_factory, "llama3"), "llama3", ("so", "pte"))


def host(scenario: str, timeout: float = 300, **args) -> dict:
    """Runs one scenario of tc_ctypes.py in a new process; its JSON result."""
    env = dict(os.environ, PYTHONPATH="")
    p = subprocess.run([sys.executable, str(HOST), str(LIBRARY), scenario, json.dumps(args)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def common(tiny, fmt) -> dict:
    return {"model": str(tiny.paths[fmt]), "tokenizer": str(tiny.runner_tokenizer)}


def runner_for(fmt):
    return aoti_run if fmt == "so" else et_run


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_info(tiny, fmt):
    info = host("info", **common(tiny, fmt))
    assert info["version"] == 1 and info["context"] == CONTEXT and info["sessions"] == 0
    assert info["backend"] == {"so": "aoti", "pte": "executorch"}[fmt]
    assert info["vocab_size"] == tiny.eager.info.vocab_size


def test_both_backends_in_one_process(tiny):
    got = host("both", models=[str(tiny.paths[f]) for f in FORMATS], tokenizer=str(tiny.runner_tokenizer),
               prompt=PROMPTS[0], steps=32)
    assert len(got["tokens"][0]) > 1 and got["tokens"][0] == got["tokens"][1]  # one model, two formats


@pytest.mark.parametrize("fmt", FORMATS)
def test_greedy_generate_equals_the_runner(tiny, fmt, tmp_path):
    for prompt in PROMPTS[:2]:
        got = host("generate", prompt=prompt, steps=48, **common(tiny, fmt))
        assert got["status"] == 0, got
        trace = tmp_path / f"{fmt}.trace"
        trace.unlink(missing_ok=True)
        p = runner_for(fmt)(tiny.paths[fmt], tiny.runner_tokenizer, "-i", prompt, "-t", "0", "-n", "48", trace=trace)
        assert p.returncode == 0, p.stderr
        assert p.stdout == prompt + got["text"] + "\n"
        fed = fed_tokens(trace)
        n_prompt = len(fed) - (len(got["tokens"]) - 1)
        assert fed[n_prompt:] == got["tokens"][:-1] and len(got["tokens"]) > 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_chat_equals_the_runner(tiny, fmt):
    got = host("chat", system=SYSTEM, messages=MESSAGES[:2], **common(tiny, fmt))
    p = runner_for(fmt)(tiny.paths[fmt], tiny.runner_tokenizer, "-m", "chat", "-y", SYSTEM, "-t", "0", "-n", "0",
                        stdin="".join(m + "\n" for m in MESSAGES[:2]))
    assert p.returncode == 0, p.stderr
    # The runner asks for a next message unless the last reply filled the context.
    more = "" if got["turns"][-1]["stop"] == "context_full" else "User: \n"
    assert p.stdout == "".join(f"User: Assistant: {t['text']}\n" for t in got["turns"]) + more


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_sessions_on_two_threads_give_what_they_give_alone(tiny, fmt):
    conversations = [MESSAGES, ["Tell me a story.", "Shorter, please.", "Once more."]]
    got = host("threads", system=SYSTEM, conversations=conversations, **common(tiny, fmt))
    assert got["together"] == got["alone"]
    assert got["alone"][0] != got["alone"][1]  # the two conversations differ: a swap would show


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_saved_session_continues_exactly_in_a_new_process(tiny, fmt, temperature, tmp_path):
    path = str(tmp_path / "chat.tcs")
    whole = host("chat", system=SYSTEM, messages=MESSAGES, temperature=temperature, seed=7, save=path, save_after=1,
                 **common(tiny, fmt))
    assert Path(path).is_file() and not [f for f in tmp_path.iterdir() if f.name != "chat.tcs"]  # no temporary left
    resumed = host("load", load=path, messages=MESSAGES[1:], **common(tiny, fmt))
    assert resumed["status"] == 0, resumed
    assert [t["tokens"] for t in resumed["turns"]] == [t["tokens"] for t in whole["turns"][1:]]
    assert [t["text"] for t in resumed["turns"]] == [t["text"] for t in whole["turns"][1:]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_callback_stop_cancel_and_length_cap_leave_the_session_usable(tiny, fmt):
    got = host("stops", message=USER, prompt=PROMPTS[0], **common(tiny, fmt))
    assert got["callback"]["status"] == 1 and got["callback"]["stop"] == "callback"
    assert one_line(got["callback"]["error"])
    assert got["after_callback"]["status"] == 0
    assert got["cancel_decode"]["status"] == 1 and got["cancel_decode"]["stop"] == "cancelled"
    assert got["after_cancel_decode"]["status"] == 0
    assert got["cancel_prefill"]["status"] == 1 and got["cancel_prefill"]["stop"] == "cancelled"
    assert got["cancel_prefill"]["generated"] <= 4  # stopped at the first text after the prefill
    assert got["after_cancel_prefill"]["status"] == 0
    capped = got["capped"]
    assert capped["status"] == 0 and (capped["stop"] == "length" and 5 <= capped["generated"] <= 8
                                      or capped["stop"] == "token" and capped["generated"] <= 5), capped
    assert got["busy"][0] == 9 and "another thread" in got["busy"][1]


def test_bad_input_is_a_status_and_one_line(tiny, tmp_path):
    model = tiny.paths["so"]
    data = model.read_bytes()
    truncated = tmp_path / "truncated.so"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.so"
    text.write_text("not a model\n")
    other = tmp_path / "other.so"  # another model's fingerprint: the same one plus a page
    other.write_bytes(data + b"\0" * 4096)

    base = tmp_path / "base.tcs"
    host("chat", messages=[USER], save=str(base), save_after=1, model=str(model), tokenizer=str(tiny.runner_tokenizer))
    session = base.read_bytes()
    bad_sessions = {
        "session_truncated": session[: len(session) // 2],
        "session_corrupted": session[:100] + bytes([session[100] ^ 1]) + session[101:],
        "session_foreign": b"not a session file at all",
        "session_version": session[:8] + b"\x02" + session[9:],
        "session_empty": b"",
    }
    paths = {}
    for name, content in bad_sessions.items():
        (tmp_path / f"{name}.tcs").write_bytes(content)
        paths[name] = str(tmp_path / f"{name}.tcs")
    paths["session_missing"] = str(tmp_path / "missing.tcs")
    pte_session = tmp_path / "pte.tcs"
    host("chat", messages=[USER], save=str(pte_session), save_after=1, **common(tiny, "pte"))
    paths["session_of_pte"] = str(pte_session)
    other_session = tmp_path / "other.tcs"
    host("chat", messages=[USER], save=str(other_session), save_after=1, model=str(other),
         tokenizer=str(tiny.runner_tokenizer))
    paths["session_of_other_model"] = str(other_session)

    got = host("errors", model=str(model), tokenizer=str(tiny.runner_tokenizer), bad_tokenizer=str(text),
               bad_models={"truncated_model": str(truncated), "text_model": str(text),
                           "missing_model": str(tmp_path / "missing.so")},
               bad_sessions=paths)
    expected = {
        "null_model_path": 2, "truncated_model": 5, "text_model": 5, "missing_model": 4, "bad_tokenizer": 6,
        "null_message": 2, "null_prompt": 2, "null_save_path": 2, "long_prompt": 8, "long_message": 8,
        "session_truncated": 7, "session_corrupted": 7, "session_foreign": 7, "session_version": 7,
        "session_empty": 7, "session_missing": 4, "session_of_pte": 7, "session_of_other_model": 7,
        "closed_session": 3, "closed_session_close": 3, "closed_model": 3, "closed_model_info": 3,
    }
    for name, status in expected.items():
        assert got[name][0] == status, (name, got[name])
        assert one_line(got[name][1]), (name, got[name])
    assert "context" in got["long_prompt"][1] and "too long" in got["long_message"][1]
    assert got["after_long_message"] == 0 and got["session_outlives_model"] == 0
    assert "version 2" in got["session_version"][1]
    assert "another model" in got["session_of_other_model"][1]
    assert "executorch" in got["session_of_pte"][1]
    assert "checksum" in got["session_corrupted"][1] and "not a torchchat session" in got["session_foreign"][1]


def test_an_installed_library_opens_both_formats(tiny, tmp_path):
    """The installed prefix is complete: its library finds our kernels and the runtimes."""
    if shutil.which("cc") is None:
        pytest.skip("cc is missing")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(LIBRARY.parent), "--prefix", str(prefix)], check=True, capture_output=True)
    lib = next(d for d in ("lib", "lib64") if (prefix / d).is_dir())
    exe = tmp_path / "consumer"
    consumer = Path(__file__).resolve().parent / "install_consumer" / "consumer.c"
    subprocess.run(["cc", "-std=c11", str(consumer), "-o", str(exe), f"-I{prefix / 'include'}", f"-L{prefix / lib}",
                    f"-Wl,-rpath,{prefix / lib}", "-ltorchchat"], check=True)
    for fmt in FORMATS:
        p = subprocess.run([str(exe), str(tiny.paths[fmt]), str(tiny.runner_tokenizer)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "model: llama, vocab 640" in p.stdout


# ---------------------------------------------------------------------------------------------
# examples/npc: the game, driven by scripted input, with a restart


NPC_CASES = [("release", "so"), ("release", "pte"), ("asan", "pte")]


@pytest.mark.parametrize("build,fmt", NPC_CASES, ids=[f"{b}-{f}" for b, f in NPC_CASES])
def test_npc_game_remembers_across_a_restart(tiny, build, fmt, tmp_path):
    npc = ROOT / ("cmake-out" if build == "release" else "cmake-out-asan") / "npc"
    if not npc.exists():
        pytest.skip(f"{npc} is not built")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")

    def play(folder: Path, lines: list[str]) -> str:
        folder.mkdir(exist_ok=True)
        p = subprocess.run([str(npc), str(tiny.paths[fmt]), "-z", str(tiny.runner_tokenizer), "-d", str(folder),
                            "-n", "16", "-s", "5"], input="".join(line + "\n" for line in lines), capture_output=True,
                           text=True, timeout=600, env=env, errors="replace")
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr[-3000:]
        return p.stdout

    def replies(out: str, who: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in out.split("> ") if line.startswith(who + ": ")]

    first = ["Hello there!", "/talk tom", "Good morning.", "/talk mira"]
    later = ["How are you?", "/talk tom", "Any news?"]
    whole = play(tmp_path / "whole", first + later + ["/quit"])
    before = play(tmp_path / "restarted", first + ["/quit"])
    after = play(tmp_path / "restarted", ["/talk mira"] + later)  # end of input: leaves and saves too
    assert "[the village will remember you]" in before
    assert "[Mira the baker remembers you]" in after and "[Old Tom the smith remembers you]" in after
    assert "[Mira the baker remembers you]" not in before
    # After the restart each villager goes on as in the game that never stopped.
    assert replies(after, "Mira the baker") == replies(whole, "Mira the baker")[1:]
    assert replies(after, "Old Tom the smith") == replies(whole, "Old Tom the smith")[1:]
    assert len(replies(whole, "Mira the baker")) == 2 and len(replies(whole, "Old Tom the smith")) == 2
    # A damaged save: that villager starts afresh, the game goes on.
    (tmp_path / "restarted" / "tom.tcs").write_bytes(b"garbage")
    out = play(tmp_path / "restarted", ["/talk tom", "Hello?"])
    assert "[Old Tom the smith has forgotten you: session file" in out and len(replies(out, "Old Tom the smith")) == 1
