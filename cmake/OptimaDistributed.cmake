# Finds what a job of many processes needs (src/dist/): LibTorch's c10d backends for Gloo (CPU) and NCCL (CUDA).
#
# Gloo and NCCL themselves are inside LibTorch's libraries, but LibTorch's ProcessGroupGloo.hpp includes Gloo's own
# headers, which the PyPI wheel does not ship; Debian's libgloo-dev has them (scripts/setup.sh installs it). Only
# its headers are used, never its library: a second Gloo beside LibTorch's would clash. A compile-and-link check
# proves that the headers fit LibTorch's c10d and that libtorch exports what src/dist/gloo_backend.cpp calls.
# NCCL's header comes with the wheel's nvidia-nccl package (the NCCL that LibTorch runs with), else the CUDA toolkit.
#
# Sets OPTIMA_GLOO, OPTIMA_NCCL (ON/OFF) and OPTIMA_GLOO_INCLUDE_DIR, OPTIMA_NCCL_INCLUDE_DIR.

set(OPTIMA_WITH_GLOO "AUTO" CACHE STRING "Many processes on CPUs through Gloo: ON, OFF or AUTO (when Gloo's headers fit)")
set_property(CACHE OPTIMA_WITH_GLOO PROPERTY STRINGS AUTO ON OFF)
set(OPTIMA_WITH_NCCL "AUTO" CACHE STRING "Many processes on CUDA devices through NCCL: ON, OFF or AUTO (CUDA builds)")
set_property(CACHE OPTIMA_WITH_NCCL PROPERTY STRINGS AUTO ON OFF)

include(CheckCXXSourceCompiles)

# Compiles and links `source` against LibTorch's libraries `libraries` (names in its lib folder) with extra include
# folders and definitions; sets `result`. (LibTorch's imported targets name others that a check project lacks, so
# the check names the files.)
function(optima_check_c10d source libraries includes definitions result)
  set(CMAKE_REQUIRED_QUIET ON)
  set(CMAKE_REQUIRED_FLAGS "${TORCH_CXX_FLAGS}")
  set(CMAKE_REQUIRED_INCLUDES ${TORCH_INCLUDE_DIRS} ${includes})
  set(CMAKE_REQUIRED_DEFINITIONS ${definitions})
  set(CMAKE_REQUIRED_LIBRARIES "")
  foreach(library IN LISTS libraries)
    list(APPEND CMAKE_REQUIRED_LIBRARIES "${TORCH_INSTALL_PREFIX}/lib/${CMAKE_SHARED_LIBRARY_PREFIX}${library}${CMAKE_SHARED_LIBRARY_SUFFIX}")
  endforeach()
  check_cxx_source_compiles("${source}" ${result})
endfunction()

# /usr/include is searched anyway; naming it with -I or -isystem would break libstdc++'s #include_next.
function(optima_nonstandard_include dir out)
  if(dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
    set(${out} "" PARENT_SCOPE)
  else()
    set(${out} "${dir}" PARENT_SCOPE)
  endif()
endfunction()

# --- Gloo ------------------------------------------------------------------------------------------------------
set(OPTIMA_GLOO OFF)
if(NOT OPTIMA_WITH_GLOO STREQUAL "OFF")
  find_path(OPTIMA_GLOO_INCLUDE_DIR NAMES gloo/rendezvous/store.h gloo/config.h DOC "Gloo's headers")
  set(_optima_gloo_why "Gloo's headers (gloo/rendezvous/store.h) were not found: install Debian's libgloo-dev \
(scripts/setup.sh does) or set OPTIMA_GLOO_INCLUDE_DIR")
  if(OPTIMA_GLOO_INCLUDE_DIR)
    file(STRINGS "${OPTIMA_GLOO_INCLUDE_DIR}/gloo/config.h" _optima_gloo_version REGEX "define GLOO_VERSION_(MAJOR|MINOR|PATCH) ")
    string(REGEX REPLACE "[^0-9;]|#define GLOO_VERSION_[A-Z]+ " "" _optima_gloo_version "${_optima_gloo_version}")
    string(REPLACE ";" "." _optima_gloo_version "${_optima_gloo_version}")
    optima_nonstandard_include("${OPTIMA_GLOO_INCLUDE_DIR}" _optima_gloo_extra)
    optima_check_c10d("
      #include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
      #include <torch/csrc/distributed/c10d/TCPStore.hpp>
      int main(int argc, char**) {
        if (argc > 1) return 0;  // links everything, runs nothing
        auto options = c10d::ProcessGroupGloo::Options::create();
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(\"127.0.0.1\"));
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        c10d::TCPStoreOptions store_options;
        auto store = c10::make_intrusive<c10d::TCPStore>(\"127.0.0.1\", store_options);
        c10::intrusive_ptr<c10d::Backend> backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, 0, 1, options);
        return backend->getSize();
      }" "torch_cpu;c10" "${_optima_gloo_extra}" "-DUSE_C10D_GLOO" OPTIMA_GLOO_FITS)
    set(_optima_gloo_why "Gloo's headers in ${OPTIMA_GLOO_INCLUDE_DIR} (version ${_optima_gloo_version}) do not \
compile or link with LibTorch's ProcessGroupGloo.hpp (see CMakeFiles/CMakeError.log)")
    if(OPTIMA_GLOO_FITS)
      set(OPTIMA_GLOO ON)
    endif()
  endif()
  if(OPTIMA_GLOO)
    message(STATUS "optima: many processes on CPUs through LibTorch's Gloo (headers ${_optima_gloo_version} in "
                   "${OPTIMA_GLOO_INCLUDE_DIR})")
  elseif(OPTIMA_WITH_GLOO STREQUAL "ON")
    message(FATAL_ERROR "OPTIMA_WITH_GLOO=ON, but ${_optima_gloo_why}")
  else()
    message(STATUS "optima: no many-process runs on CPUs: ${_optima_gloo_why}")
  endif()
endif()

# --- NCCL ------------------------------------------------------------------------------------------------------
set(OPTIMA_NCCL OFF)
if(NOT OPTIMA_WITH_NCCL STREQUAL "OFF")
  set(_optima_nccl_why "the build has no CUDA sources (OPTIMA_CUDA is OFF)")
  if(OPTIMA_CUDA)
    file(GLOB _optima_nccl_hints LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include")
    find_path(OPTIMA_NCCL_INCLUDE_DIR nccl.h HINTS ${_optima_nccl_hints} "${CUDAToolkit_ROOT}/include"
              DOC "NCCL's header (the one LibTorch runs with)")
    set(_optima_nccl_why "NCCL's header nccl.h was not found (set OPTIMA_NCCL_INCLUDE_DIR)")
    if(OPTIMA_NCCL_INCLUDE_DIR)
      optima_nonstandard_include("${OPTIMA_NCCL_INCLUDE_DIR}" _optima_nccl_extra)
      optima_check_c10d("
        #include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
        int main(int argc, char**) {
          if (argc > 1) return 0;  // links everything, runs nothing
          auto options = c10d::ProcessGroupNCCL::Options::create();
          c10::intrusive_ptr<c10d::Store> store;
          c10::intrusive_ptr<c10d::Backend> backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, 0, 1, options);
          return backend->getSize();
        }" "torch_cuda;torch_cpu;c10_cuda;c10" "${_optima_nccl_extra};${CUDAToolkit_INCLUDE_DIRS}" "-DUSE_C10D_NCCL"
        OPTIMA_NCCL_FITS)
      set(_optima_nccl_why "LibTorch's ProcessGroupNCCL.hpp does not compile or link with \
${OPTIMA_NCCL_INCLUDE_DIR}/nccl.h (see CMakeFiles/CMakeError.log)")
      if(OPTIMA_NCCL_FITS)
        set(OPTIMA_NCCL ON)
      endif()
    endif()
  endif()
  if(OPTIMA_NCCL)
    message(STATUS "optima: many processes on CUDA devices through LibTorch's NCCL (nccl.h in ${OPTIMA_NCCL_INCLUDE_DIR})")
  elseif(OPTIMA_WITH_NCCL STREQUAL "ON")
    message(FATAL_ERROR "OPTIMA_WITH_NCCL=ON, but ${_optima_nccl_why}")
  else()
    message(STATUS "optima: no many-process runs on CUDA devices: ${_optima_nccl_why}")
  endif()
endif()

# Adds the backends to `target` (optima_lib).
function(optima_add_distributed target)
  target_sources(${target} PRIVATE src/dist/distributed.cpp)
  if(OPTIMA_GLOO)
    target_sources(${target} PRIVATE src/dist/gloo_backend.cpp)
    set_property(SOURCE src/dist/gloo_backend.cpp APPEND PROPERTY COMPILE_DEFINITIONS USE_C10D_GLOO)
    if(_optima_gloo_extra)
      set_property(SOURCE src/dist/gloo_backend.cpp APPEND PROPERTY INCLUDE_DIRECTORIES "${_optima_gloo_extra}")
    endif()
  endif()
  if(OPTIMA_NCCL)
    target_sources(${target} PRIVATE src/dist/nccl_backend.cpp)
    set_property(SOURCE src/dist/nccl_backend.cpp APPEND PROPERTY COMPILE_DEFINITIONS USE_C10D_NCCL)
    if(_optima_nccl_extra)
      set_property(SOURCE src/dist/nccl_backend.cpp APPEND PROPERTY INCLUDE_DIRECTORIES "${_optima_nccl_extra}")
    endif()
  endif()
  # 0/1 so that a missing definition cannot pass for a present one.
  set(_gloo 0)
  set(_nccl 0)
  if(OPTIMA_GLOO)
    set(_gloo 1)
  endif()
  if(OPTIMA_NCCL)
    set(_nccl 1)
  endif()
  set_property(SOURCE src/dist/distributed.cpp APPEND PROPERTY COMPILE_DEFINITIONS OPTIMA_HAS_GLOO=${_gloo}
                                                                                   OPTIMA_HAS_NCCL=${_nccl})
endfunction()
