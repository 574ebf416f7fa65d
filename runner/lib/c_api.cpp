// libtorchchat: the C API (torchchat.h) over the runner core and the backends.
//
// Sections: errors at the boundary, handles, models, sessions, session files, the C functions.
// Nothing but tc_* symbols leaves the library (libtorchchat.map), and no exception crosses
// the boundary: every C function runs its body through `boundary`.

#include "torchchat.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "session_file.h"
#include "torchchat/backend.h"
#include "torchchat/chat_template.h"
#include "torchchat/cli.h"
#include "torchchat/error.h"
#include "torchchat/metadata.h"
#include "torchchat/runner.h"
#include "torchchat/tokenizer.h"

#include "backends/backend_library.h"

namespace torchchat {
namespace {

// ---------------------------------------------------------------------------------------------
// Errors at the boundary

thread_local std::string last_error;

// An error with the status the C caller gets.
class ApiError : public Error {
 public:
  ApiError(tc_status status, const std::string& message) : Error(message), status(status) {}
  tc_status status;
};

// Runs `body`, turning every exception into a status and tc_last_error's message.
template <typename Body>
tc_status boundary(tc_status default_status, Body&& body) {
  try {
    const tc_status status = body();
    if (status != TC_OK && last_error.empty()) last_error = "failed";
    return status;
  } catch (const ApiError& e) {
    last_error = e.what();
    return e.status;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return TC_ERR_RUNTIME;
  } catch (const std::exception& e) {
    last_error = e.what();
    return default_status;
  } catch (...) {
    last_error = "unknown error";
    return TC_ERR_RUNTIME;
  }
}

// One line: the core's messages are, but a backend's may quote a file's bytes.
std::string one_line(std::string message) {
  for (char& c : message)
    if (c == '\n' || c == '\r') c = ' ';
  return message;
}

void require(bool ok, const char* message) {
  if (!ok) throw ApiError(TC_ERR_INVALID_ARGUMENT, message);
}

// ---------------------------------------------------------------------------------------------
// Handles: numbers, never addresses, so that a closed or foreign handle is an error, not a crash.

template <typename T>
class Registry {
 public:
  std::uintptr_t add(std::shared_ptr<T> object) {
    std::lock_guard<std::mutex> lock(mutex_);
    next_ += 16;  // never reused: a closed handle stays closed
    objects_.emplace(next_, std::move(object));
    return next_;
  }
  std::shared_ptr<T> get(const void* handle, const char* what) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = objects_.find(reinterpret_cast<std::uintptr_t>(handle));
    if (it == objects_.end())
      throw ApiError(TC_ERR_INVALID_HANDLE, handle == nullptr ? std::string(what) + " is NULL"
                                                              : std::string(what) + " is closed or not a " + what);
    return it->second;
  }
  std::shared_ptr<T> remove(const void* handle, const char* what) {
    std::shared_ptr<T> object = get(handle, what);
    std::lock_guard<std::mutex> lock(mutex_);
    objects_.erase(reinterpret_cast<std::uintptr_t>(handle));
    return object;
  }

 private:
  std::mutex mutex_;
  std::uintptr_t next_ = 0x7c0000;
  std::map<std::uintptr_t, std::shared_ptr<T>> objects_;
};

// ---------------------------------------------------------------------------------------------
// Models

// The model's identity in a session file: its metadata, size and 64 samples of its bytes
// (a full hash of a 500 MB model would cost more than loading it).
std::string model_fingerprint(const std::string& path, const ModelMetadata& metadata) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::uint64_t>(in.tellg());
  const std::string json = to_metadata_json(metadata);
  std::uint64_t h = checksum64(std::as_bytes(std::span(json.data(), json.size())), size);
  std::vector<char> sample(4096);
  for (int i = 0; i < 64; ++i) {
    in.clear();
    in.seekg(static_cast<std::streamoff>(size / 64 * i));
    in.read(sample.data(), static_cast<std::streamsize>(sample.size()));
    h = checksum64(std::as_bytes(std::span(sample.data(), static_cast<std::size_t>(in.gcount()))), h);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(checksum64(std::as_bytes(std::span(content.data(), content.size())))));
  return hex;
}

enum class Format { Aoti, ExecuTorch };

Format sniff(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0 || S_ISDIR(info.st_mode))
    throw ApiError(TC_ERR_IO, path + ": cannot open the model file");
  std::ifstream f(path, std::ios::binary);
  char head[8] = {};
  f.read(head, 8);
  if (!f && f.gcount() < 4) throw ApiError(TC_ERR_BAD_MODEL, path + ": too short to be a model");
  if (std::memcmp(head, "\x7f" "ELF", 4) == 0 || std::memcmp(head, "PK\x03\x04", 4) == 0) return Format::Aoti;
  if (f.gcount() == 8 && head[4] == 'E' && head[5] == 'T') return Format::ExecuTorch;
  throw ApiError(TC_ERR_BAD_MODEL, path + ": not a model (neither an AOT Inductor .so/.pt2 nor an ExecuTorch .pte)");
}

// The folder of this library, where the backend libraries are (in the build tree and in an
// install prefix alike).
std::string own_folder() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_folder), &info) == 0 || info.dli_fname == nullptr) return "";
  const std::string self = info.dli_fname;
  const std::size_t slash = self.find_last_of('/');
  return slash == std::string::npos ? "" : self.substr(0, slash + 1);
}

// A backend made by its library (backend_library.h), loaded on first use and kept for the
// process (libtorch cannot be unloaded). RTLD_GLOBAL: the model libraries that AOT Inductor
// loads find our kernels' entry points in the global scope, as when a runner linked them.
// RTLD_LAZY, as a program's own libraries are bound: binding every one of libtorch's functions
// up front took ~20 ms more (the backend libraries are linked with --no-undefined).
std::unique_ptr<Backend> make_backend(const char* library, const BackendOptions& options) {
  static std::mutex mutex;
  static std::map<std::string, TorchchatMakeBackend> loaded;
  TorchchatMakeBackend make = nullptr;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = loaded.find(library);
    if (it == loaded.end()) {
      const std::string path = own_folder() + library;
      void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_GLOBAL);
      if (handle == nullptr) throw ApiError(TC_ERR_UNSUPPORTED, "cannot load the backend: " + one_line(dlerror()));
      const auto symbol = reinterpret_cast<TorchchatMakeBackend>(dlsym(handle, kMakeBackendSymbol));
      if (symbol == nullptr) throw ApiError(TC_ERR_UNSUPPORTED, path + " is not a torchchat backend library");
      it = loaded.emplace(library, symbol).first;
    }
    make = it->second;
  }
  return std::unique_ptr<Backend>(make(options));
}

std::unique_ptr<Backend> load_backend(const std::string& path, Format format) {
  BackendOptions options{path, default_metadata(2)};
  if (format == Format::Aoti) {
#ifdef TORCHCHAT_WITH_AOTI
    // The model's code calls our kernels' C entry points, which the dynamic loader looks up
    // in the global scope: a host that dlopen()ed us (Python's ctypes) has them local.
    return make_backend("libtorchchat_aoti_backend.so", options);
#else
    throw ApiError(TC_ERR_UNSUPPORTED, path + ": this libtorchchat was built without AOT Inductor support");
#endif
  }
#ifdef TORCHCHAT_WITH_ET
  return make_backend("libtorchchat_et_backend.so", options);
#else
  throw ApiError(TC_ERR_UNSUPPORTED, path + ": this libtorchchat was built without ExecuTorch support");
#endif
}

// The tokenizer beside the model that its metadata's kind names.
std::string tokenizer_beside(const std::string& model_path, TokenizerKind kind) {
  const std::size_t slash = model_path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "" : model_path.substr(0, slash + 1);
  switch (kind) {
    case TokenizerKind::HfBpe: return folder + "tokenizer.json";
    case TokenizerKind::Tiktoken: return folder + "tokenizer.model";
    case TokenizerKind::SentencePiece: return folder + "tokenizer.bin";
  }
  return folder + "tokenizer.bin";
}

// As the runners check it (run_main.cpp): the metadata must fit the tokenizer.
void check_model_against_tokenizer(const ModelMetadata& metadata, const Tokenizer& tokenizer, const std::string& path) {
  const auto fail = [](const std::string& message) { throw ApiError(TC_ERR_BAD_TOKENIZER, message); };
  if (metadata.tokenizer != tokenizer.kind())
    fail("the model was exported with a " + std::string(to_string(metadata.tokenizer)) + " tokenizer, but " + path +
         " is a " + std::string(to_string(tokenizer.kind())) + " tokenizer");
  const auto check_id = [&](int id, const char* what) {
    if (id < 0 || id >= tokenizer.vocab_size())
      fail(std::string(what) + " id " + std::to_string(id) + " is outside the tokenizer's " +
           std::to_string(tokenizer.vocab_size()) + " tokens");
  };
  check_id(metadata.bos_id, "BOS");
  for (const int id : metadata.stop_ids) check_id(id, "stop token");
  if (tokenizer.vocab_size() > metadata.vocab_size)
    fail("the tokenizer has " + std::to_string(tokenizer.vocab_size()) + " tokens but the model only " +
         std::to_string(metadata.vocab_size));
}

struct Model {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string backend_name, description, fingerprint, tokenizer_fingerprint;
  bool separate_caches = false;  // sessions of their own (Backend::new_kv_state)
  std::mutex run_mutex;           // one forward pass at a time
  std::mutex sessions_mutex;
  int sessions = 0;

  Model(const std::string& path, const char* tokenizer_path) {
    const Format format = sniff(path);
    backend_name = format == Format::Aoti ? "aoti" : "executorch";
    // A tokenizer the caller names is parsed on a thread of its own while the backend loads the
    // model (tens of milliseconds each); one found beside the model needs the model's metadata.
    std::future<std::unique_ptr<Tokenizer>> parsing;
    if (tokenizer_path != nullptr) parsing = std::async(std::launch::async, load_tokenizer, std::string(tokenizer_path));
    try {
      backend = load_backend(path, format);
    } catch (const ApiError&) {
      throw;
    } catch (const std::exception& e) {
      throw ApiError(TC_ERR_BAD_MODEL, one_line(e.what()));
    }
    const ModelMetadata& metadata = backend->metadata();
    const std::string tokenizer_file = tokenizer_path ? tokenizer_path : tokenizer_beside(path, metadata.tokenizer);
    try {
      tokenizer = parsing.valid() ? parsing.get() : load_tokenizer(tokenizer_file);
    } catch (const std::exception& e) {
      throw ApiError(TC_ERR_BAD_TOKENIZER, one_line(e.what()));
    }
    check_model_against_tokenizer(metadata, *tokenizer, tokenizer_file);
    const std::string kernels = backend->kernels();
    description = describe_model(metadata) + (kernels.empty() ? "" : ", kernels " + kernels);
    fingerprint = model_fingerprint(path, metadata);
    tokenizer_fingerprint = file_fingerprint(tokenizer_file);
    // Whether the backend can keep a cache outside the program: try one.
    std::unique_ptr<KvState> probe = backend->new_kv_state();
    separate_caches = probe != nullptr;
  }
};

// ---------------------------------------------------------------------------------------------
// Sessions

// What one session's core objects (Generator, ChatSession) see as their backend: the shared
// model with this session's cache, one forward pass at a time. It also remembers the tokens
// the cache holds, for session files.
class SessionBackend final : public Backend {
 public:
  SessionBackend(Model& model, KvState* state) : model_(model), state_(state) {}
  const ModelMetadata& metadata() const override { return model_.backend->metadata(); }
  std::string kernels() const override { return model_.backend->kernels(); }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override {
    {
      std::lock_guard<std::mutex> lock(model_.run_mutex);
      if (state_ != nullptr) model_.backend->use_kv_state(*state_);
      const std::span<const float> logits = model_.backend->forward(tokens, n, start_pos);
      logits_.assign(logits.begin(), logits.end());  // another session's pass may reuse the backend's
    }
    cache_tokens.resize(static_cast<std::size_t>(start_pos));
    cache_tokens.insert(cache_tokens.end(), tokens, tokens + n);
    ++forward_calls;
    return logits_;
  }

  std::vector<int> cache_tokens;  // the tokens whose keys and values the cache holds, in order
  int forward_calls = 0;

 private:
  Model& model_;
  KvState* state_;
  std::vector<float> logits_;
};

struct Session {
  std::shared_ptr<Model> model;
  std::unique_ptr<KvState> kv;
  std::unique_ptr<SessionBackend> view;
  std::string system_prompt;
  tc_session_config config{};
  std::unique_ptr<ChatSession> chat;
  std::vector<int> last_tokens;
  std::mutex busy;
  std::atomic<bool> cancel{false};

  Session(std::shared_ptr<Model> m, const tc_session_config& c) : model(std::move(m)), config(c) {
    require(c.temperature >= 0 && c.temperature < 1e30f, "temperature must be >= 0");
    require(c.top_p >= 0 && c.top_p <= 1, "top_p must be in [0, 1]");
    require(c.max_positions >= 0 && c.max_tokens >= 0, "max_positions and max_tokens must be >= 0");
    system_prompt = c.system_prompt ? c.system_prompt : "";
    config.system_prompt = nullptr;
    {
      std::lock_guard<std::mutex> lock(model->sessions_mutex);
      if (!model->separate_caches && model->sessions > 0)
        throw ApiError(TC_ERR_UNSUPPORTED,
                       "this model keeps its KV cache inside its program: one session at a time (export it again "
                       "for several)");
      ++model->sessions;
    }
    if (model->separate_caches) {
      std::lock_guard<std::mutex> lock(model->run_mutex);
      kv = model->backend->new_kv_state();
    }
    view = std::make_unique<SessionBackend>(*model, kv.get());
  }

  ~Session() {
    if (kv) {
      std::lock_guard<std::mutex> lock(model->run_mutex);
      try {
        model->backend->release_kv_state(*kv);
      } catch (...) {
      }
      kv.reset();
    }
    std::lock_guard<std::mutex> lock(model->sessions_mutex);
    --model->sessions;
  }

  GenerationConfig generation_config() const {
    GenerationConfig g;
    g.max_positions = config.max_positions;
    g.sampler = {config.temperature, config.top_p, config.seed};
    return g;
  }

  ChatSession& chat_session() {
    if (!chat) {
      try {
        chat = std::make_unique<ChatSession>(*view, *model->tokenizer, generation_config(), system_prompt);
      } catch (const std::exception& e) {
        throw ApiError(TC_ERR_UNSUPPORTED, one_line(e.what()));
      }
    }
    return *chat;
  }

  // The turn's text callback: the caller's, the reply's length cap, and cancellation.
  struct Streamer {
    Session& session;
    tc_text_fn on_text;
    void* user_data;
    int forward_calls_at_start;
    tc_stop_reason stopped = TC_STOP_TOKEN;
    bool stop = false;
    bool operator()(std::string_view text) {
      if (session.cancel.load()) {
        stopped = TC_STOP_CANCELLED;
        stop = true;
      } else if (on_text != nullptr && on_text(user_data, text.data(), text.size()) != 0) {
        stopped = TC_STOP_CALLBACK;
        stop = true;
      } else if (session.config.max_tokens > 0 &&
                 session.view->forward_calls - forward_calls_at_start + 1 >= session.config.max_tokens) {
        // this token's text is out; the forward calls since the prefill fed the ones before it
        stopped = TC_STOP_LENGTH;
        stop = true;
      }
      return !stop;
    }
  };

  tc_status finish(const GenerationResult& result, const Streamer& streamer, tc_stats* stats, int position,
                   int limit) {
    last_tokens = result.tokens;
    cancel.store(false);
    tc_stop_reason reason = TC_STOP_TOKEN;
    switch (result.stop_reason) {
      case StopReason::StopToken: reason = TC_STOP_TOKEN; break;
      case StopReason::StepLimit: reason = TC_STOP_LENGTH; break;
      case StopReason::ContextFull: reason = TC_STOP_CONTEXT_FULL; break;
      case StopReason::Cancelled: reason = streamer.stopped; break;
    }
    if (stats != nullptr) {
      *stats = tc_stats{};
      stats->prompt_tokens = result.stats.prompt_tokens;
      stats->generated_tokens = result.stats.generated_tokens;
      stats->prefill_seconds = result.stats.prefill_seconds;
      stats->first_token_seconds = result.stats.first_token_seconds;
      stats->decode_seconds = result.stats.decode_seconds;
      stats->prefill_tokens_per_second = result.stats.prefill_tokens_per_second();
      stats->decode_tokens_per_second = result.stats.decode_tokens_per_second();
      stats->stop_reason = reason;
      stats->position = position;
      stats->position_limit = limit;
    }
    if (reason == TC_STOP_CALLBACK) throw ApiError(TC_STOPPED, "the text callback stopped the turn");
    if (reason == TC_STOP_CANCELLED) throw ApiError(TC_STOPPED, "the turn was cancelled");
    return TC_OK;
  }

  tc_status chat_turn(const char* message, tc_text_fn on_text, void* user_data, tc_stats* stats) {
    ChatSession& session = chat_session();
    const ModelMetadata& metadata = model->backend->metadata();
    if (session.over())
      throw ApiError(TC_ERR_CONTEXT_FULL, "the conversation fills the context: reset the session or start another");
    // Checked here, not by ChatSession (which would end the conversation): a message too long
    // for the positions left is refused and the conversation goes on.
    const ChatSession::State state = session.state();
    const ChatFormatter formatter(metadata.chat_template, *model->tokenizer, metadata.bos_id,
                                  metadata.stop_ids.empty() ? -1 : metadata.stop_ids.front(), metadata.add_bos);
    const std::size_t turn = formatter.user_turn(message, system_prompt, state.first_turn).size() + (state.first_turn ? 0 : 1);
    const int left = session.position_limit() - state.position;
    if (static_cast<int>(turn) > left)
      throw ApiError(TC_ERR_CONTEXT_FULL, "the message is too long: its turn is " + std::to_string(turn) + " tokens, and " +
                                              std::to_string(left) + " of the " +
                                              std::to_string(session.position_limit()) + " positions are left");
    Streamer streamer{*this, on_text, user_data, view->forward_calls + 1};
    GenerationResult result;
    try {
      result = session.reply(message, std::ref(streamer));
    } catch (const std::exception& e) {
      cancel.store(false);
      throw ApiError(TC_ERR_RUNTIME, one_line(e.what()));
    }
    return finish(result, streamer, stats, session.position(), session.position_limit());
  }

  tc_status generate(const char* prompt, tc_text_fn on_text, void* user_data, tc_stats* stats) {
    chat.reset();  // the cache is about to hold something else
    view->cache_tokens.clear();
    last_tokens.clear();
    Generator generator(*view, *model->tokenizer, generation_config());
    Streamer streamer{*this, on_text, user_data, view->forward_calls + 1};
    GenerationResult result;
    try {
      result = generator.generate(prompt, std::ref(streamer));
    } catch (const std::exception& e) {
      cancel.store(false);
      const std::string message = one_line(e.what());
      const bool too_long = message.find("the prompt is ") != std::string::npos && message.find(" tokens") != std::string::npos;
      throw ApiError(too_long ? TC_ERR_CONTEXT_FULL : TC_ERR_RUNTIME, message);
    }
    chat.reset();
    const int limit = resolve_position_limit(config.max_positions, model->backend->metadata().max_seq_len);
    return finish(result, streamer, stats, static_cast<int>(view->cache_tokens.size()), limit);
  }

  void reset() {
    chat.reset();
    view->cache_tokens.clear();
    last_tokens.clear();
  }
};

// Holds the session for one call; another thread's call meanwhile gets TC_ERR_BUSY.
class SessionLock {
 public:
  explicit SessionLock(Session& session) : lock_(session.busy, std::try_to_lock) {
    if (!lock_.owns_lock()) throw ApiError(TC_ERR_BUSY, "the session is running a call on another thread");
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

// ---------------------------------------------------------------------------------------------
// Session files

std::string session_header(Session& s) {
  nlohmann::json h;
  h["model"] = s.model->fingerprint;
  h["tokenizer"] = s.model->tokenizer_fingerprint;
  h["backend"] = s.model->backend_name;
  h["system_prompt"] = s.system_prompt;
  h["config"] = {{"temperature", s.config.temperature}, {"top_p", s.config.top_p},
                 {"seed", std::to_string(s.config.seed)}, {"max_positions", s.config.max_positions},
                 {"max_tokens", s.config.max_tokens}};
  if (s.chat) {
    const ChatSession::State state = s.chat->state();
    h["chat"] = {{"position", state.position}, {"first_turn", state.first_turn}, {"over", state.over},
                 {"sampler", std::to_string(state.sampler)}};
  }
  h["cache_tokens"] = s.view->cache_tokens;
  h["last_tokens"] = s.last_tokens;
  h["forward_calls"] = s.view->forward_calls;
  return h.dump();
}

std::vector<std::span<std::byte>> released_bytes(Session& s) {
  std::lock_guard<std::mutex> lock(s.model->run_mutex);
  s.model->backend->release_kv_state(*s.kv);
  return s.kv->bytes();
}

void save_session(Session& s, const std::string& path) {
  if (!s.kv) throw ApiError(TC_ERR_UNSUPPORTED, "this model keeps its KV cache inside its program: it cannot be saved");
  const std::string header = session_header(s);
  try {
    write_session_file(path, header, released_bytes(s));
  } catch (const std::exception& e) {
    throw ApiError(TC_ERR_IO, one_line(e.what()));
  }
}

std::shared_ptr<Session> load_session(const std::shared_ptr<Model>& model, const std::string& path) {
  const auto bad = [&](const std::string& why) { throw ApiError(TC_ERR_BAD_SESSION, "session file '" + path + "' " + why); };
  std::unique_ptr<SessionFile> file;
  try {
    file = std::make_unique<SessionFile>(path);
  } catch (const std::exception& e) {
    struct stat info {};
    throw ApiError(::stat(path.c_str(), &info) != 0 ? TC_ERR_IO : TC_ERR_BAD_SESSION, one_line(e.what()));
  }
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(file->header());
    if (h.at("backend").get<std::string>() != model->backend_name)
      bad("was saved with a " + h.at("backend").get<std::string>() + " model, not this " + model->backend_name + " one");
    if (h.at("model").get<std::string>() != model->fingerprint) bad("was saved with another model");
    if (h.at("tokenizer").get<std::string>() != model->tokenizer_fingerprint) bad("was saved with another tokenizer");
    tc_session_config config{};
    const auto& c = h.at("config");
    config.temperature = c.at("temperature").get<float>();
    config.top_p = c.at("top_p").get<float>();
    config.seed = std::stoull(c.at("seed").get<std::string>());
    config.max_positions = c.at("max_positions").get<std::int32_t>();
    config.max_tokens = c.at("max_tokens").get<std::int32_t>();
    const std::string system_prompt = h.at("system_prompt").get<std::string>();
    config.system_prompt = system_prompt.c_str();
    auto session = std::make_shared<Session>(model, config);
    if (!session->kv) throw ApiError(TC_ERR_UNSUPPORTED, "this model keeps its KV cache inside its program: a saved session cannot be loaded");
    file->read_buffers(released_bytes(*session));
    session->view->cache_tokens = h.at("cache_tokens").get<std::vector<int>>();
    session->view->forward_calls = h.at("forward_calls").get<int>();
    session->last_tokens = h.at("last_tokens").get<std::vector<int>>();
    if (h.contains("chat")) {
      const auto& c2 = h.at("chat");
      ChatSession::State state;
      state.position = c2.at("position").get<int>();
      state.first_turn = c2.at("first_turn").get<bool>();
      state.over = c2.at("over").get<bool>();
      state.sampler = std::stoull(c2.at("sampler").get<std::string>());
      session->chat_session().restore(state);
    }
    return session;
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    bad("is damaged: " + one_line(e.what()));
  }
  return nullptr;
}

Registry<Model>& models() {
  static Registry<Model> registry;
  return registry;
}

Registry<Session>& sessions() {
  static Registry<Session> registry;
  return registry;
}

}  // namespace
}  // namespace torchchat

// -------------------------------------------------------------------------------------------------
// The C functions

using namespace torchchat;

extern "C" {

int tc_version(void) { return TC_API_VERSION; }

const char* tc_last_error(void) { return last_error.c_str(); }

const char* tc_status_name(int status) {
  switch (status) {
    case TC_OK: return "TC_OK";
    case TC_STOPPED: return "TC_STOPPED";
    case TC_ERR_INVALID_ARGUMENT: return "TC_ERR_INVALID_ARGUMENT";
    case TC_ERR_INVALID_HANDLE: return "TC_ERR_INVALID_HANDLE";
    case TC_ERR_IO: return "TC_ERR_IO";
    case TC_ERR_BAD_MODEL: return "TC_ERR_BAD_MODEL";
    case TC_ERR_BAD_TOKENIZER: return "TC_ERR_BAD_TOKENIZER";
    case TC_ERR_BAD_SESSION: return "TC_ERR_BAD_SESSION";
    case TC_ERR_CONTEXT_FULL: return "TC_ERR_CONTEXT_FULL";
    case TC_ERR_BUSY: return "TC_ERR_BUSY";
    case TC_ERR_UNSUPPORTED: return "TC_ERR_UNSUPPORTED";
    case TC_ERR_RUNTIME: return "TC_ERR_RUNTIME";
  }
  return "unknown status";
}

tc_status tc_model_open(const char* model_path, const char* tokenizer_path, tc_model** out) {
  return boundary(TC_ERR_BAD_MODEL, [&] {
    require(out != nullptr, "the out pointer is NULL");
    *out = nullptr;
    require(model_path != nullptr, "the model path is NULL");
    auto model = std::make_shared<Model>(model_path, tokenizer_path);
    *out = reinterpret_cast<tc_model*>(models().add(std::move(model)));
    return TC_OK;
  });
}

tc_status tc_model_info_get(tc_model* model, tc_model_info* out) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto m = models().get(model, "model");
    require(out != nullptr, "the out pointer is NULL");
    const ModelMetadata& metadata = m->backend->metadata();
    *out = tc_model_info{metadata.vocab_size, metadata.max_seq_len, m->separate_caches ? 0 : 1,
                         m->backend_name.c_str(), m->description.c_str()};
    return TC_OK;
  });
}

tc_status tc_model_close(tc_model* model) {
  return boundary(TC_ERR_RUNTIME, [&] {
    models().remove(model, "model");  // freed with its last session
    return TC_OK;
  });
}

void tc_session_config_init(tc_session_config* config) {
  if (config == nullptr) return;
  *config = tc_session_config{};
  config->temperature = 1.0f;
  config->top_p = 0.9f;
}

tc_status tc_session_open(tc_model* model, const tc_session_config* config, tc_session** out) {
  return boundary(TC_ERR_RUNTIME, [&] {
    require(out != nullptr, "the out pointer is NULL");
    *out = nullptr;
    auto m = models().get(model, "model");
    tc_session_config defaults;
    tc_session_config_init(&defaults);
    auto session = std::make_shared<Session>(std::move(m), config ? *config : defaults);
    *out = reinterpret_cast<tc_session*>(sessions().add(std::move(session)));
    return TC_OK;
  });
}

tc_status tc_session_close(tc_session* session) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto s = sessions().get(session, "session");
    SessionLock lock(*s);  // not while a call runs on it
    sessions().remove(session, "session");
    return TC_OK;
  });
}

tc_status tc_chat(tc_session* session, const char* message, tc_text_fn on_text, void* user_data, tc_stats* stats) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto s = sessions().get(session, "session");
    require(message != nullptr, "the message is NULL");
    SessionLock lock(*s);
    return s->chat_turn(message, on_text, user_data, stats);
  });
}

tc_status tc_generate(tc_session* session, const char* prompt, tc_text_fn on_text, void* user_data, tc_stats* stats) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto s = sessions().get(session, "session");
    require(prompt != nullptr, "the prompt is NULL");
    SessionLock lock(*s);
    return s->generate(prompt, on_text, user_data, stats);
  });
}

tc_status tc_session_cancel(tc_session* session) {
  return boundary(TC_ERR_RUNTIME, [&] {
    sessions().get(session, "session")->cancel.store(true);
    return TC_OK;
  });
}

tc_status tc_session_last_tokens(tc_session* session, int32_t* ids, size_t capacity, size_t* count) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto s = sessions().get(session, "session");
    require(count != nullptr, "the count pointer is NULL");
    require(ids != nullptr || capacity == 0, "the ids pointer is NULL");
    SessionLock lock(*s);
    *count = s->last_tokens.size();
    for (size_t i = 0; i < capacity && i < s->last_tokens.size(); ++i) ids[i] = s->last_tokens[i];
    return TC_OK;
  });
}

tc_status tc_session_reset(tc_session* session) {
  return boundary(TC_ERR_RUNTIME, [&] {
    const auto s = sessions().get(session, "session");
    SessionLock lock(*s);
    s->reset();
    return TC_OK;
  });
}

tc_status tc_session_save(tc_session* session, const char* path) {
  return boundary(TC_ERR_IO, [&] {
    const auto s = sessions().get(session, "session");
    require(path != nullptr, "the path is NULL");
    SessionLock lock(*s);
    save_session(*s, path);
    return TC_OK;
  });
}

tc_status tc_session_load(tc_model* model, const char* path, tc_session** out) {
  return boundary(TC_ERR_BAD_SESSION, [&] {
    require(out != nullptr, "the out pointer is NULL");
    *out = nullptr;
    const auto m = models().get(model, "model");
    require(path != nullptr, "the path is NULL");
    auto session = load_session(m, path);
    *out = reinterpret_cast<tc_session*>(sessions().add(std::move(session)));
    return TC_OK;
  });
}

int tc_run_cli(int argc, const char* const* argv, const char* backend) {
  const std::string name = backend ? backend : "";
  BackendFactory factory;
#ifdef TORCHCHAT_WITH_AOTI
  if (name == "aoti")
    factory = [](const BackendOptions& options) { return make_backend("libtorchchat_aoti_backend.so", options); };
#endif
#ifdef TORCHCHAT_WITH_ET
  if (name == "executorch")
    factory = [](const BackendOptions& options) { return make_backend("libtorchchat_et_backend.so", options); };
#endif
  if (!factory) {
    std::fprintf(stderr, "%s", error_line("this libtorchchat has no '" + name + "' backend").c_str());
    return 1;
  }
  return run_main(argc, argv, factory);
}

}  // extern "C"
