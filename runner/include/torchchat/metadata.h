#pragma once
// What the runner needs to know about a model, carried inside the exported
// artifact as one JSON string (written by the Python exporter):
//
//   {"format_version": 2, "arch": "llama", "vocab_size": 32000, "max_seq_len": 2048,
//    "bos_id": 1, "add_bos": true, "stop_ids": [2], "tokenizer": "sentencepiece",
//    "chat_template": "llama2", "dtype": "fp32",
//    "chat_turns": {"first": [...], "first_with_system": [...], "next": [...]},
//    "quantize": {"linear:int4": {"groupsize": 32}, "embedding:int8": {"groupsize": 0}},
//    "target_cpu": "avx2", "cpu_features": ["avx", "avx2", "fma", ...]}
//
// tokenizer: sentencepiece | tiktoken | hf_bpe; chat_template: llama2 | llama3 |
// chatml | none; chat_turns (optional): the model's own template cut into turns at export
// (ChatTurns; "text", {"token": "<|im_end|>"}, {"message": "user"|"system"}), which wins over
// chat_template; dtype: fp32 | bf16 | fp16; quantize (only in a model exported
// with --quantize): the spec its weights went through, {scheme: {option: value}}
// (torchchat/quantize.py); target_cpu and cpu_features (optional): the CPUs the
// artifact's compiled code was built for and the features it needs, by GCC's names
// (torchchat/target_cpu.py; checked by require_cpu_features before the code is loaded).
// The program takes (tokens, input_pos, kv_len, n_logits) (torchchat/model.py
// Transformer.forward; an ExecuTorch program's kv_len is None). Another format_version
// is refused. An artifact without metadata gets default_metadata() from -l and -v.

#include <string>
#include <vector>

#include "torchchat/chat_template.h"
#include "torchchat/tokenizer.h"

namespace torchchat {

// The metadata's format version; torchchat/metadata.py FORMAT_VERSION is its twin.
inline constexpr int kFormatVersion = 2;

struct ModelMetadata {
  int format_version = kFormatVersion;
  std::string arch = "llama";
  int vocab_size = 0;
  int max_seq_len = 0;
  int bos_id = 1;
  bool add_bos = true;
  std::vector<int> stop_ids;
  TokenizerKind tokenizer = TokenizerKind::SentencePiece;
  ChatTemplate chat_template;  // the kind, and the model's own template when it has one
  std::string dtype = "fp32";
  // The "quantize" object as compact JSON, keys in the artifact's order; empty
  // when the model is not quantized. The runner only reports it (the weights'
  // form is the exported program's business).
  std::string quantize;
  // "avx2", "avx512", "native", or "any" (no compiled code: .pte); empty when not recorded.
  std::string target_cpu;
  // The CPU features the compiled code needs (torchchat/target_cpu.py FEATURES).
  std::vector<std::string> cpu_features;
};

// Parses and validates the artifact's metadata. Throws Error naming the bad key.
ModelMetadata parse_metadata_json(const std::string& text);

// The JSON form of `metadata` (the inverse of parse_metadata_json).
std::string to_metadata_json(const ModelMetadata& metadata);

// The quantization for people: "linear:int4 g32 + embedding:int8" (a groupsize
// of 0, per channel, is not shown; "precision" is left to the dtype), or "none".
std::string describe_quantize(const ModelMetadata& metadata);

// Whether the model's linears were quantized for our kernels (linear:int8 or linear:int4, the
// output layer included; not linear:a8w4dq, which is XNNPACK's).
bool linears_on_our_kernels(const ModelMetadata& metadata);

// Whether the model runs any of our kernels (kernels/): its linears (fp32/bf16 in AOT Inductor
// exports, linear:int8/int4 in any) or its attention (over an fp32 or bf16 cache); an fp16 model
// without linear:int8/int4 runs none.
bool runs_our_kernels(const ModelMetadata& metadata);

// One line for stderr: "model: llama, vocab 49152, context 512, dtype fp32, quantize none".
std::string describe_model(const ModelMetadata& metadata);

// Llama conventions for an artifact without metadata (-l 2 or 3):
//   2: bos 1, stop {2}, add_bos, llama2 template, sentencepiece
//   3: bos 128000, stop {128001, 128009}, add_bos, llama3 template, tiktoken
// vocab_size and max_seq_len are left 0 (unknown) for the backend to fill.
ModelMetadata default_metadata(int llama_version);

}  // namespace torchchat
