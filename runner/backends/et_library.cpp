// libtorchchat_et_backend.so: the ExecuTorch backend, loaded by libtorchchat (backend_library.h).

#include "backend_library.h"
#include "et_backend.h"

extern "C" __attribute__((visibility("default"))) torchchat::Backend* torchchat_make_backend(
    const torchchat::BackendOptions& options) {
  return torchchat::make_et_backend(options).release();
}
