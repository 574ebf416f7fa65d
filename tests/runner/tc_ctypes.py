"""libtorchchat through ctypes, as another language's host drives it (tests/runner/test_c_api.py).

The binding (`Library`, `Session`) declares every C function of torchchat.h by hand, as a Lua,
C# or Godot binding would. Run as a script, it plays one scenario in a process of its own
(nothing else of ours loaded: no torch, no executorch Python) and prints its result as JSON:

    python3 tests/runner/tc_ctypes.py LIBRARY SCENARIO '{"model": ..., ...}'
"""
from __future__ import annotations

import ctypes
import json
import sys
import threading
import time

TC_OK, TC_STOPPED, TC_ERR_INVALID_ARGUMENT, TC_ERR_INVALID_HANDLE, TC_ERR_IO = 0, 1, 2, 3, 4
TC_ERR_BAD_MODEL, TC_ERR_BAD_TOKENIZER, TC_ERR_BAD_SESSION, TC_ERR_CONTEXT_FULL, TC_ERR_BUSY = 5, 6, 7, 8, 9
TC_ERR_UNSUPPORTED, TC_ERR_RUNTIME = 10, 11
STOP_NAMES = ["token", "length", "context_full", "callback", "cancelled"]


class SessionConfig(ctypes.Structure):
    _fields_ = [("system_prompt", ctypes.c_char_p), ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("max_positions", ctypes.c_int32), ("max_tokens", ctypes.c_int32)]


class Stats(ctypes.Structure):
    _fields_ = [("prompt_tokens", ctypes.c_int32), ("generated_tokens", ctypes.c_int32),
                ("prefill_seconds", ctypes.c_double), ("first_token_seconds", ctypes.c_double),
                ("decode_seconds", ctypes.c_double), ("prefill_tokens_per_second", ctypes.c_double),
                ("decode_tokens_per_second", ctypes.c_double), ("stop_reason", ctypes.c_int32),
                ("position", ctypes.c_int32), ("position_limit", ctypes.c_int32)]


class ModelInfo(ctypes.Structure):
    _fields_ = [("vocab_size", ctypes.c_int32), ("context", ctypes.c_int32), ("sessions", ctypes.c_int32),
                ("backend", ctypes.c_char_p), ("description", ctypes.c_char_p)]


TEXT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t)
P = ctypes.c_void_p


class TcError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Library:
    def __init__(self, path: str):
        self.lib = lib = ctypes.CDLL(path)
        sigs = {
            "tc_version": (ctypes.c_int, []),
            "tc_last_error": (ctypes.c_char_p, []),
            "tc_status_name": (ctypes.c_char_p, [ctypes.c_int]),
            "tc_model_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(P)]),
            "tc_model_info_get": (ctypes.c_int, [P, ctypes.POINTER(ModelInfo)]),
            "tc_model_close": (ctypes.c_int, [P]),
            "tc_session_config_init": (None, [ctypes.POINTER(SessionConfig)]),
            "tc_session_open": (ctypes.c_int, [P, ctypes.POINTER(SessionConfig), ctypes.POINTER(P)]),
            "tc_session_close": (ctypes.c_int, [P]),
            "tc_chat": (ctypes.c_int, [P, ctypes.c_char_p, TEXT_FN, P, ctypes.POINTER(Stats)]),
            "tc_generate": (ctypes.c_int, [P, ctypes.c_char_p, TEXT_FN, P, ctypes.POINTER(Stats)]),
            "tc_session_cancel": (ctypes.c_int, [P]),
            "tc_session_last_tokens": (ctypes.c_int, [P, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                                      ctypes.POINTER(ctypes.c_size_t)]),
            "tc_session_reset": (ctypes.c_int, [P]),
            "tc_session_save": (ctypes.c_int, [P, ctypes.c_char_p]),
            "tc_session_load": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        }
        for name, (restype, argtypes) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def check(self, status: int) -> int:
        if status not in (TC_OK,):
            raise TcError(status, self.lib.tc_last_error().decode())
        return status

    def open_model(self, model: str, tokenizer: str | None = None) -> int:
        handle = P()
        self.check(self.lib.tc_model_open(model.encode(), tokenizer.encode() if tokenizer else None,
                                          ctypes.byref(handle)))
        return handle.value

    def config(self, **fields) -> SessionConfig:
        c = SessionConfig()
        self.lib.tc_session_config_init(ctypes.byref(c))
        for k, v in fields.items():
            setattr(c, k, v.encode() if isinstance(v, str) else v)
        return c

    def open_session(self, model: int, **fields) -> "Session":
        handle = P()
        self.check(self.lib.tc_session_open(model, ctypes.byref(self.config(**fields)), ctypes.byref(handle)))
        return Session(self, handle.value)

    def load_session(self, model: int, path: str) -> "Session":
        handle = P()
        self.check(self.lib.tc_session_load(model, path.encode(), ctypes.byref(handle)))
        return Session(self, handle.value)


class Session:
    def __init__(self, library: Library, handle: int):
        self.library, self.lib, self.handle = library, library.lib, handle

    def turn(self, fn, text: str, on_text=None) -> dict:
        """One tc_chat / tc_generate: {"status", "text", "tokens", "stop", "stats", "error"}."""
        pieces: list[bytes] = []

        def collect(_user, data, length):
            piece = ctypes.string_at(data, length)
            pieces.append(piece)
            return on_text(piece) if on_text else 0

        stats = Stats()
        status = fn(self.handle, text.encode(), TEXT_FN(collect), None, ctypes.byref(stats))
        error = self.lib.tc_last_error().decode() if status != TC_OK else ""
        return {"status": status, "text": b"".join(pieces).decode("utf-8", "replace"), "tokens": self.last_tokens(),
                "stop": STOP_NAMES[stats.stop_reason], "generated": stats.generated_tokens,
                "position": stats.position, "error": error}

    def chat(self, message: str, on_text=None) -> dict:
        return self.turn(self.lib.tc_chat, message, on_text)

    def generate(self, prompt: str, on_text=None) -> dict:
        return self.turn(self.lib.tc_generate, prompt, on_text)

    def last_tokens(self) -> list[int]:
        count = ctypes.c_size_t()
        self.library.check(self.lib.tc_session_last_tokens(self.handle, None, 0, ctypes.byref(count)))
        ids = (ctypes.c_int32 * max(count.value, 1))()
        self.library.check(self.lib.tc_session_last_tokens(self.handle, ids, count.value, ctypes.byref(count)))
        return list(ids[:count.value])

    def save(self, path: str) -> None:
        self.library.check(self.lib.tc_session_save(self.handle, path.encode()))

    def close(self) -> None:
        self.library.check(self.lib.tc_session_close(self.handle))


# ---------------------------------------------------------------------------------------------
# Scenarios (one process each)


def scenario_generate(lib: Library, a: dict) -> dict:
    model = lib.open_model(a["model"], a.get("tokenizer"))
    s = lib.open_session(model, temperature=0.0, max_positions=a["steps"])
    return s.generate(a["prompt"])


def scenario_chat(lib: Library, a: dict) -> dict:
    """Turns in one session; with "save": saved after turn "save_after" (then the rest go on)."""
    model = lib.open_model(a["model"], a.get("tokenizer"))
    s = lib.open_session(model, system_prompt=a.get("system", ""), temperature=a.get("temperature", 0.0),
                         seed=a.get("seed", 0))
    turns = []
    for i, message in enumerate(a["messages"]):
        turns.append(s.chat(message))
        if a.get("save") and i + 1 == a["save_after"]:
            s.save(a["save"])
    return {"turns": turns}


def scenario_load(lib: Library, a: dict) -> dict:
    """Loads a saved session and goes on with more turns; a refused file gives its error."""
    model = lib.open_model(a["model"], a.get("tokenizer"))
    try:
        s = lib.load_session(model, a["load"])
    except TcError as e:
        return {"status": e.status, "error": e.message}
    return {"status": TC_OK, "turns": [s.chat(m) for m in a["messages"]]}


def scenario_threads(lib: Library, a: dict) -> dict:
    """Each conversation alone (sessions one after another), then all at once on threads, over one model."""
    model = lib.open_model(a["model"], a.get("tokenizer"))
    conversations = a["conversations"]

    def run(messages):
        s = lib.open_session(model, system_prompt=a.get("system", ""), temperature=0.0)
        out = [s.chat(m)["tokens"] for m in messages]
        s.close()
        return out

    alone = [run(messages) for messages in conversations]
    together: list = [None] * len(conversations)

    def worker(i):
        together[i] = run(conversations[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(conversations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"alone": alone, "together": together}


def scenario_stops(lib: Library, a: dict) -> dict:
    """A callback that stops, a cancel from another thread (mid-decode, and before the turn:
    mid-prefill), a reply length cap, a busy session; after each, the session goes on."""
    model = lib.open_model(a["model"], a.get("tokenizer"))
    out = {}
    s = lib.open_session(model, temperature=0.0)
    out["callback"] = s.chat(a["message"], on_text=lambda piece: 1)
    out["after_callback"] = s.chat(a["message"])

    def slow(piece):
        time.sleep(0.02)
        return 0

    s2 = lib.open_session(model, temperature=0.0, max_tokens=30)  # replies that leave room for the next
    timer = threading.Timer(0.15, lambda: lib.lib.tc_session_cancel(s2.handle))
    timer.start()
    out["cancel_decode"] = s2.generate(a["prompt"], on_text=slow)
    timer.join()
    out["after_cancel_decode"] = s2.chat(a["message"])
    lib.check(lib.lib.tc_session_cancel(s2.handle))  # before the turn: it stops after the prefill
    out["cancel_prefill"] = s2.chat(a["message"])
    out["after_cancel_prefill"] = s2.chat(a["message"])

    s3 = lib.open_session(model, temperature=0.0, max_tokens=5)
    out["capped"] = s3.generate(a["prompt"])

    busy = []

    def reenter(piece):
        busy.append(lib.lib.tc_chat(s3.handle, b"again", TEXT_FN(lambda *_: 0), None, None))
        busy.append(lib.lib.tc_last_error().decode())
        return 1

    s3.chat(a["message"], on_text=reenter)
    out["busy"] = busy[:2]
    return out


def scenario_errors(lib: Library, a: dict) -> dict:
    """Bad input through the C API: each a status and one line."""
    out = {}

    def record(name, status):
        out[name] = [status, lib.lib.tc_last_error().decode()]

    handle = P()
    record("null_model_path", lib.lib.tc_model_open(None, None, ctypes.byref(handle)))
    for name, path in a.get("bad_models", {}).items():
        record(name, lib.lib.tc_model_open(path.encode(), a.get("tokenizer", "").encode() or None, ctypes.byref(handle)))
    if a.get("bad_tokenizer"):
        record("bad_tokenizer", lib.lib.tc_model_open(a["model"].encode(), a["bad_tokenizer"].encode(),
                                                      ctypes.byref(handle)))
    model = lib.open_model(a["model"], a.get("tokenizer"))
    s = lib.open_session(model, temperature=0.0)
    record("null_message", lib.lib.tc_chat(s.handle, None, TEXT_FN(lambda *_: 0), None, None))
    record("null_prompt", lib.lib.tc_generate(s.handle, None, TEXT_FN(lambda *_: 0), None, None))
    record("null_save_path", lib.lib.tc_session_save(s.handle, None))
    long = "Once upon a time " * 200
    r = s.generate(long)
    out["long_prompt"] = [r["status"], r["error"]]
    r = s.chat(long)
    out["long_message"] = [r["status"], r["error"]]
    out["after_long_message"] = s.chat("Hi")["status"]
    for name, path in a.get("bad_sessions", {}).items():
        record(name, lib.lib.tc_session_load(model, path.encode(), ctypes.byref(handle)))
    s.close()
    record("closed_session", lib.lib.tc_chat(s.handle, b"hi", TEXT_FN(lambda *_: 0), None, None))
    record("closed_session_close", lib.lib.tc_session_close(s.handle))
    s2 = lib.open_session(model, temperature=0.0)
    lib.check(lib.lib.tc_model_close(model))
    record("closed_model", lib.lib.tc_session_open(model, None, ctypes.byref(handle)))
    out["session_outlives_model"] = s2.chat("Hi")["status"]
    s2.close()
    info = ModelInfo()
    record("closed_model_info", lib.lib.tc_model_info_get(model, ctypes.byref(info)))
    return out


def scenario_info(lib: Library, a: dict) -> dict:
    model = lib.open_model(a["model"], a.get("tokenizer"))
    info = ModelInfo()
    lib.check(lib.lib.tc_model_info_get(model, ctypes.byref(info)))
    return {"version": lib.lib.tc_version(), "vocab_size": info.vocab_size, "context": info.context,
            "sessions": info.sessions, "backend": info.backend.decode(), "description": info.description.decode()}


def scenario_both(lib: Library, a: dict) -> dict:
    """An AOT Inductor model and an ExecuTorch program open in one process, generating in turn."""
    models = [lib.open_model(path, a.get("tokenizer")) for path in a["models"]]
    sessions = [lib.open_session(m, temperature=0.0, max_positions=a["steps"]) for m in models]
    return {"tokens": [s.generate(a["prompt"])["tokens"] for s in sessions]}


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}

if __name__ == "__main__":
    library, scenario, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(SCENARIOS[scenario](Library(library), args)))
