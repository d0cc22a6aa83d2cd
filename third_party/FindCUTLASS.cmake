# Finds the CUTLASS/CuTe headers. We never vendor CUTLASS; the headers come from
#   1. -DCUTLASS_DIR=<dir> or the environment variable CUTLASS_DIR: a CUTLASS checkout
#      (<dir>/include/cute) or an include folder itself (<dir>/cute), or
#   2. the `nvidia-cutlass` wheel installed in the Python that runs the build
#      (<site-packages>/cutlass_library/source/include). Install it with
#      `pip install --no-deps nvidia-cutlass==4.2.0.0`: its Python dependencies serve its
#      kernel generator, we only read its headers.
# Defines the INTERFACE target CUTLASS::cute and CUTLASS_INCLUDE_DIR, CUTLASS_VERSION.

set(_fa_cute_cutlass_hints)
if(CUTLASS_DIR)
  list(APPEND _fa_cute_cutlass_hints "${CUTLASS_DIR}")
elseif(DEFINED ENV{CUTLASS_DIR})
  list(APPEND _fa_cute_cutlass_hints "$ENV{CUTLASS_DIR}")
endif()

if(NOT _fa_cute_cutlass_hints)
  if(NOT Python_EXECUTABLE)
    find_package(Python COMPONENTS Interpreter REQUIRED)
  endif()
  # find_spec locates the package without importing it, so none of the wheel's Python
  # dependencies need to be installed.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util as u; s = u.find_spec('cutlass_library'); print(s.submodule_search_locations[0] if s else '')"
    OUTPUT_VARIABLE _fa_cute_cutlass_pkg
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _fa_cute_cutlass_rc)
  if(_fa_cute_cutlass_rc EQUAL 0 AND _fa_cute_cutlass_pkg)
    list(APPEND _fa_cute_cutlass_hints "${_fa_cute_cutlass_pkg}/source")
  endif()
endif()

find_path(CUTLASS_INCLUDE_DIR
  NAMES cute/tensor.hpp
  HINTS ${_fa_cute_cutlass_hints}
  PATH_SUFFIXES include .
  NO_DEFAULT_PATH)

if(NOT CUTLASS_INCLUDE_DIR)
  message(FATAL_ERROR
    "fa_cute: CUTLASS/CuTe headers not found (looked in: '${_fa_cute_cutlass_hints}').\n"
    "Either `pip install --no-deps nvidia-cutlass==4.2.0.0` into the Python that builds "
    "fa_cute (with pip's --no-build-isolation), or pass -DCUTLASS_DIR=<CUTLASS checkout> "
    "(or set the environment variable CUTLASS_DIR).")
endif()

file(STRINGS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h" _fa_cute_cutlass_ver
     REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) [0-9]+")
string(REGEX REPLACE ".*MAJOR ([0-9]+).*" "\\1" _major "${_fa_cute_cutlass_ver}")
string(REGEX REPLACE ".*MINOR ([0-9]+).*" "\\1" _minor "${_fa_cute_cutlass_ver}")
string(REGEX REPLACE ".*PATCH ([0-9]+).*" "\\1" _patch "${_fa_cute_cutlass_ver}")
set(CUTLASS_VERSION "${_major}.${_minor}.${_patch}")
if(CUTLASS_VERSION VERSION_LESS 3.5)
  message(FATAL_ERROR "fa_cute: CUTLASS ${CUTLASS_VERSION} at ${CUTLASS_INCLUDE_DIR} is too old; need >= 3.5 (tested with 4.2.0).")
endif()
message(STATUS "fa_cute: CUTLASS ${CUTLASS_VERSION} headers at ${CUTLASS_INCLUDE_DIR}")

if(NOT TARGET CUTLASS::cute)
  add_library(CUTLASS::cute INTERFACE IMPORTED)
  set_target_properties(CUTLASS::cute PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CUTLASS_INCLUDE_DIR}")
endif()
