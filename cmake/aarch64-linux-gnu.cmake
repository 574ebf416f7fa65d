# Cross-compiling for 64-bit ARM Linux with Debian's g++-aarch64-linux-gnu (scripts/build_native.sh
# et --target aarch64). The aarch64 libraries come from Debian's multiarch packages
# (libpcre2-dev:arm64, libgtest-dev:arm64 in /usr/lib/aarch64-linux-gnu; scripts/install_native_deps.sh)
# and ExecuTorch from its manylinux aarch64 wheel (executorch_DIR). ctest runs the tests under
# qemu-aarch64-static with the cross packages' sysroot.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Libraries and packages only from the target's directories (the host's x86-64 ones would link
# but not run); programs (pkg-config, python3) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# The cross packages' C library first: the multiarch libc6:arm64 (pulled in by libpcre2-dev:arm64)
# is another build of glibc than the cross ld.so, and the two together hang in pthread_create.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static -L /usr/aarch64-linux-gnu
    -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib)
