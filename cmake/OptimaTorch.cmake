# Finds LibTorch for optima and checks that it can be linked with the rest of the build.
#
# Where LibTorch comes from, in order:
#   1. Torch_DIR, when the user points at any LibTorch (a libtorch zip, a source build, a wheel);
#   2. the Python interpreter OPTIMA_PYTHON (set by scripts/setup.sh to the project's pinned torch environment),
#      asked for torch.utils.cmake_prefix_path.
# Then the C++ ABI of LibTorch (_GLIBCXX_USE_CXX11_ABI) is read from its own libraries and compared with this
# compiler's: a mismatch links but crashes or fails at run time, so it is refused here.

set(OPTIMA_PYTHON "" CACHE FILEPATH "Python interpreter whose torch package provides LibTorch")

if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  if(NOT OPTIMA_PYTHON)
    find_program(OPTIMA_PYTHON_FOUND NAMES python3 python)
    set(_optima_python "${OPTIMA_PYTHON_FOUND}")
  else()
    set(_optima_python "${OPTIMA_PYTHON}")
  endif()
  if(NOT _optima_python)
    message(FATAL_ERROR "LibTorch not found: set Torch_DIR to a LibTorch's share/cmake/Torch folder, "
                        "or run scripts/setup.sh, which installs the pinned torch and passes OPTIMA_PYTHON.")
  endif()
  execute_process(
    COMMAND "${_optima_python}" -c "import torch.utils; print(torch.utils.cmake_prefix_path, end='')"
    OUTPUT_VARIABLE _optima_torch_prefix
    ERROR_VARIABLE _optima_torch_error
    RESULT_VARIABLE _optima_torch_result)
  if(NOT _optima_torch_result EQUAL 0)
    message(FATAL_ERROR "LibTorch not found: '${_optima_python}' cannot import torch (${_optima_torch_error}). "
                        "Run scripts/setup.sh, or set Torch_DIR.")
  endif()
  list(PREPEND CMAKE_PREFIX_PATH "${_optima_torch_prefix}")
  message(STATUS "LibTorch from ${_optima_python}: ${_optima_torch_prefix}")
endif()

# LibTorch's CUDA set-up looks for the toolkit itself; point it at nvcc's toolkit when one is on PATH.
if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS "/usr/local/cuda")
  set(CUDAToolkit_ROOT "/usr/local/cuda")
endif()

# Without a GPU, LibTorch's CUDA set-up would try to run a program to detect one; name the architectures instead
# (A100 and H100/H200; override with -DTORCH_CUDA_ARCH_LIST=...).
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0" CACHE STRING "CUDA architectures for LibTorch's CUDA flags")
endif()

find_package(Torch REQUIRED)

# --- C++ ABI check -------------------------------------------------------------------------------------------
# LibTorch built with the new ABI exports std::__cxx11 symbols from libc10.
find_library(OPTIMA_C10_LIBRARY c10 PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
find_program(OPTIMA_NM nm)
set(OPTIMA_TORCH_CXX11_ABI "")
if(OPTIMA_C10_LIBRARY AND OPTIMA_NM)
  execute_process(COMMAND "${OPTIMA_NM}" -D --defined-only "${OPTIMA_C10_LIBRARY}" OUTPUT_VARIABLE _optima_c10_symbols)
  string(FIND "${_optima_c10_symbols}" "__cxx11" _optima_cxx11_pos)
  if(_optima_cxx11_pos EQUAL -1)
    set(OPTIMA_TORCH_CXX11_ABI 0)
  else()
    set(OPTIMA_TORCH_CXX11_ABI 1)
  endif()
endif()
# An explicit flag in TORCH_CXX_FLAGS wins over what the symbols suggest.
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=([01])")
  set(OPTIMA_TORCH_CXX11_ABI ${CMAKE_MATCH_1})
endif()

include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_QUIET ON)
check_cxx_source_compiles("#include <string>
#if !_GLIBCXX_USE_CXX11_ABI
#error old ABI
#endif
int main() { return 0; }" OPTIMA_COMPILER_CXX11_ABI)
unset(CMAKE_REQUIRED_QUIET)
if(OPTIMA_COMPILER_CXX11_ABI)
  set(_optima_compiler_abi 1)
else()
  set(_optima_compiler_abi 0)
endif()

if(OPTIMA_TORCH_CXX11_ABI STREQUAL "")
  message(WARNING "Could not determine LibTorch's _GLIBCXX_USE_CXX11_ABI; assuming it matches the compiler's.")
elseif(NOT OPTIMA_TORCH_CXX11_ABI EQUAL _optima_compiler_abi)
  message(FATAL_ERROR
    "C++ ABI mismatch: LibTorch at ${TORCH_INSTALL_PREFIX} uses _GLIBCXX_USE_CXX11_ABI=${OPTIMA_TORCH_CXX11_ABI}, "
    "but this compiler and the system libraries optima links (spdlog, fmt, sentencepiece) use "
    "_GLIBCXX_USE_CXX11_ABI=${_optima_compiler_abi}. Use a LibTorch built with the same ABI "
    "(PyPI torch >= 2.7 and the cxx11-abi LibTorch archives use 1).")
endif()
message(STATUS "LibTorch ${Torch_VERSION}: _GLIBCXX_USE_CXX11_ABI=${OPTIMA_TORCH_CXX11_ABI} matches the compiler")

# Some wheels (torch 2.11) export libstdc++'s std::filesystem from their own libraries; CMakeLists.txt links
# libstdc++ first so that optima never binds to those copies. Said here, so that a crash report can be matched.
find_library(OPTIMA_TORCH_CPU_LIBRARY torch_cpu PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
if(OPTIMA_TORCH_CPU_LIBRARY AND OPTIMA_NM)
  execute_process(COMMAND "${OPTIMA_NM}" -D --defined-only "${OPTIMA_TORCH_CPU_LIBRARY}"
                  OUTPUT_VARIABLE _optima_torch_cpu_symbols)
  string(FIND "${_optima_torch_cpu_symbols}" " T _ZNSt10filesystem" _optima_stdfs_pos)
  if(NOT _optima_stdfs_pos EQUAL -1)
    message(STATUS "LibTorch ${Torch_VERSION} exports its own std::filesystem: libstdc++ is linked ahead of it")
  endif()
endif()

# --- CUDA ----------------------------------------------------------------------------------------------------
# CAFFE2_USE_CUDA is set by LibTorch's config when it was built with CUDA.
set(OPTIMA_TORCH_HAS_CUDA OFF)
if(CAFFE2_USE_CUDA OR TARGET torch_cuda)
  set(OPTIMA_TORCH_HAS_CUDA ON)
endif()

# LibTorch from a wheel finds its CUDA libraries (NCCL, cuBLAS, ...) in the wheel's sibling nvidia/ packages through
# its own RPATH at run time. The linker does not follow $ORIGIN there and could pick older system copies (e.g. an
# older NCCL): tell it where they are.
if(OPTIMA_TORCH_HAS_CUDA)
  file(GLOB OPTIMA_TORCH_NVIDIA_LIBS LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib")
  foreach(_dir IN LISTS OPTIMA_TORCH_NVIDIA_LIBS)
    get_filename_component(_dir "${_dir}" ABSOLUTE)
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_dir}")
  endforeach()
endif()
