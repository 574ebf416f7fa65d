/*
 * torchchat.h: the C API of libtorchchat, the llama runner as a library.
 *
 * A model (tc_model) is an exported artifact loaded once: an AOT Inductor .so or .pt2, or an
 * ExecuTorch .pte, told apart by content. A session (tc_session) is one conversation over a
 * model, with its own KV cache; several sessions share a model's weights.
 *
 *   tc_model* model;
 *   if (tc_model_open("model.so", NULL, &model) != TC_OK) { fprintf(stderr, "%s\n", tc_last_error()); ... }
 *   tc_session_config config;
 *   tc_session_config_init(&config);
 *   config.system_prompt = "You are a villager.";
 *   tc_session* session;
 *   tc_session_open(model, &config, &session);
 *   tc_chat(session, "Hello!", print_text, NULL, NULL);   // the reply streams to print_text
 *   tc_session_save(session, "villager.tcs");
 *   tc_session_close(session);
 *   tc_model_close(model);
 *
 * Errors: every call returns a tc_status; on anything but TC_OK, tc_last_error() holds a
 * one-line message. Handles that are NULL, closed or not ours are refused with
 * TC_ERR_INVALID_HANDLE (never a crash). Strings are UTF-8 and NUL-terminated.
 *
 * Threading:
 *   - Any call may come from any thread. tc_last_error() is per thread: it describes the last
 *     call that failed on the calling thread.
 *   - Different sessions may run on different threads at once, also sessions of one model; the
 *     model runs one forward pass at a time (the sessions take turns, each with its own cache),
 *     so their tokens are those each gives alone.
 *   - One session runs one call at a time: a call on a session that is busy on another thread
 *     returns TC_ERR_BUSY. The exception is tc_session_cancel, which any thread may call at
 *     any time: the turn in progress stops when it next streams text (a prefill under way runs to
 *     its end first), returns TC_STOPPED, and the session stays usable: the conversation holds
 *     the turn as far as it went. A cancel while no turn runs stops the session's next turn.
 *   - Callbacks run on the thread that called tc_chat / tc_generate, inside that call; they
 *     must not call into the same session (TC_ERR_BUSY), other sessions are fine.
 *   - tc_model_close may come before the model's sessions are closed: the model is freed with
 *     its last session.
 */
#ifndef TORCHCHAT_H
#define TORCHCHAT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TC_EXPORT __attribute__((visibility("default")))
#else
#define TC_EXPORT
#endif

/* The API this header describes; tc_version() is the library's. A program built against
 * version N runs with a library of version N. */
#define TC_API_VERSION 1

typedef struct tc_model tc_model;
typedef struct tc_session tc_session;

typedef enum tc_status {
  TC_OK = 0,
  TC_STOPPED = 1,              /* the turn ended early: the callback returned non-zero, or tc_session_cancel */
  TC_ERR_INVALID_ARGUMENT = 2, /* a NULL string or out pointer, or a value out of range */
  TC_ERR_INVALID_HANDLE = 3,   /* a NULL, closed or foreign tc_model / tc_session */
  TC_ERR_IO = 4,               /* a file that cannot be read or written */
  TC_ERR_BAD_MODEL = 5,        /* not a model, damaged, from another format version, or needs another CPU */
  TC_ERR_BAD_TOKENIZER = 6,    /* a tokenizer file that cannot be read, or does not fit the model */
  TC_ERR_BAD_SESSION = 7,      /* a session file that is truncated, damaged, or from another model */
  TC_ERR_CONTEXT_FULL = 8,     /* the prompt or message does not fit the positions left */
  TC_ERR_BUSY = 9,             /* the session is running a call on another thread */
  TC_ERR_UNSUPPORTED = 10,     /* e.g. a .pte given to a library built without ExecuTorch */
  TC_ERR_RUNTIME = 11          /* the model failed, or memory ran out */
} tc_status;

/* Why a turn ended (tc_stats.stop_reason). */
typedef enum tc_stop_reason {
  TC_STOP_TOKEN = 0,        /* the model ended its reply */
  TC_STOP_LENGTH = 1,       /* the reply reached max_tokens, or the session's max_positions */
  TC_STOP_CONTEXT_FULL = 2, /* the model's context is full: the conversation is over */
  TC_STOP_CALLBACK = 3,     /* the callback returned non-zero */
  TC_STOP_CANCELLED = 4     /* tc_session_cancel */
} tc_stop_reason;

typedef struct tc_session_config {
  const char* system_prompt; /* chat only; NULL or "" for none; copied */
  float temperature;         /* 0 = greedy; default 1 */
  float top_p;               /* nucleus mass in [0, 1]; default 0.9 */
  uint64_t seed;             /* the sampler's seed; default 0 */
  int32_t max_positions;     /* positions the conversation may use; 0 = the model's context */
  int32_t max_tokens;        /* tokens one reply may have (the reply's length cap); 0 = no cap */
} tc_session_config;

typedef struct tc_stats {
  int32_t prompt_tokens;     /* fed in this turn */
  int32_t generated_tokens;  /* sampled in this turn (a final stop token included) */
  double prefill_seconds;
  double first_token_seconds;
  double decode_seconds;
  double prefill_tokens_per_second;
  double decode_tokens_per_second;
  int32_t stop_reason;       /* tc_stop_reason */
  int32_t position;          /* positions the conversation uses after the turn */
  int32_t position_limit;    /* positions it may use */
} tc_stats;

typedef struct tc_model_info {
  int32_t vocab_size;
  int32_t context;           /* the model's max_seq_len */
  int32_t sessions;          /* 0 = any number; 1 = one at a time (its KV cache cannot leave the program) */
  const char* backend;       /* "aoti" or "executorch"; valid while the model is open */
  const char* description;   /* "model: llama, vocab 49152, context 512, ..."; valid while the model is open */
} tc_model_info;

/* Receives the reply as it is produced, in whole UTF-8 characters (`text`, `length` bytes, not
 * NUL-terminated). Return 0 to go on, non-zero to stop the turn (it then returns TC_STOPPED). */
typedef int (*tc_text_fn)(void* user_data, const char* text, size_t length);

TC_EXPORT int tc_version(void); /* TC_API_VERSION of the library */

/* The message of the last call on this thread that did not return TC_OK ("" if none). */
TC_EXPORT const char* tc_last_error(void);
/* "TC_OK", "TC_ERR_BAD_MODEL", ... */
TC_EXPORT const char* tc_status_name(int status);

/* Loads a model. `tokenizer_path` NULL: the file the model's metadata names beside the model
 * (tokenizer.json, tokenizer.model or tokenizer.bin, by the metadata's tokenizer kind). */
TC_EXPORT tc_status tc_model_open(const char* model_path, const char* tokenizer_path, tc_model** out);
TC_EXPORT tc_status tc_model_info_get(tc_model* model, tc_model_info* out);
TC_EXPORT tc_status tc_model_close(tc_model* model);

/* The defaults, to be changed field by field. */
TC_EXPORT void tc_session_config_init(tc_session_config* config);
/* `config` NULL: the defaults. */
TC_EXPORT tc_status tc_session_open(tc_model* model, const tc_session_config* config, tc_session** out);
TC_EXPORT tc_status tc_session_close(tc_session* session);

/* One chat turn: the user's message in the model's chat template, and the reply streamed to
 * `on_text` (may be NULL). `stats` (may be NULL) receives the turn's figures, also when the turn
 * stopped early. A message that does not fit the positions left is refused with
 * TC_ERR_CONTEXT_FULL and changes nothing. */
TC_EXPORT tc_status tc_chat(tc_session* session, const char* message, tc_text_fn on_text, void* user_data,
                            tc_stats* stats);

/* Continues `prompt` (BOS added if the model wants one), as `aoti_run -m generate`. Starts the
 * session over: its conversation is replaced. */
TC_EXPORT tc_status tc_generate(tc_session* session, const char* prompt, tc_text_fn on_text, void* user_data,
                                tc_stats* stats);

/* Stops the session's turn in progress (from any thread). */
TC_EXPORT tc_status tc_session_cancel(tc_session* session);

/* The token ids of the last turn's reply (a final stop token included). Writes up to `capacity`
 * ids to `ids` (may be NULL when capacity is 0) and their number to `*count`. */
TC_EXPORT tc_status tc_session_last_tokens(tc_session* session, int32_t* ids, size_t capacity, size_t* count);

/* Forgets the conversation (the system prompt stays). */
TC_EXPORT tc_status tc_session_reset(tc_session* session);

/* Writes the conversation (tokens, KV cache, sampler state, settings) to `path`, atomically: the
 * file is whole or not there. */
TC_EXPORT tc_status tc_session_save(tc_session* session, const char* path);
/* A new session of `model` that continues the saved conversation exactly. A file from another
 * model, tokenizer or file format version is refused (TC_ERR_BAD_SESSION). */
TC_EXPORT tc_status tc_session_load(tc_model* model, const char* path, tc_session** out);

/* The runners' command line (aoti_run, et_run: runner/src/cli.cpp) on one backend, "aoti" or
 * "executorch": what their mains call. Returns the exit code. */
TC_EXPORT int tc_run_cli(int argc, const char* const* argv, const char* backend);

#ifdef __cplusplus
}
#endif

#endif /* TORCHCHAT_H */
