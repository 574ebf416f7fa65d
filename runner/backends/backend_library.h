#pragma once
// A backend built as a shared library of its own (libtorchchat_aoti_backend.so,
// libtorchchat_et_backend.so), which libtorchchat loads when a model of its kind is first
// opened: a runner or program that opens .pte files never loads libtorch, whose start-up alone
// (static initializers registering thousands of operators) costs ~0.15 s of CPU, and aoti_run
// parses its tokenizer while libtorch starts.
//
// The library's one exported function makes the backend (the same compiler and standard library
// on both sides: an internal interface, not the C API); it throws torchchat::Error as the
// backend's constructor does.

#include "torchchat/backend.h"

extern "C" {
using TorchchatMakeBackend = torchchat::Backend* (*)(const torchchat::BackendOptions& options);
}

namespace torchchat {
inline constexpr char kMakeBackendSymbol[] = "torchchat_make_backend";
}  // namespace torchchat
