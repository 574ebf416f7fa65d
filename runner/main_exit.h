#pragma once
// How the runner mains end.

#include <unistd.h>

#include <cstdio>

#if defined(__SANITIZE_ADDRESS__)
#define TORCHCHAT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TORCHCHAT_ASAN 1
#endif
#endif

// libtorch's static destructors unregister its thousands of operators one by one, about 75 ms
// of CPU (half as much again as its start-up), and nothing they free outlives the process. So
// once our output is out (flushed here; a flush that fails is a failure, as it is not for
// exit()), the process ends without running them. Sanitizer builds end the ordinary way: their
// leak check runs at exit.
inline int end_process(int status) {
  if (std::fflush(nullptr) != 0) {
    std::fputs("error: cannot write the output\n", stderr);
    if (status == 0) status = 1;
  }
#ifndef TORCHCHAT_ASAN
  _exit(status);
#endif
  return status;
}
