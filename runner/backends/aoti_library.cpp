// libtorchchat_aoti_backend.so: the AOT Inductor backend, loaded by libtorchchat (backend_library.h).

#include "aoti_backend.h"
#include "backend_library.h"

extern "C" __attribute__((visibility("default"))) torchchat::Backend* torchchat_make_backend(
    const torchchat::BackendOptions& options) {
  return new torchchat::AotiBackend(options);
}
