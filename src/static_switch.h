#pragma once

// Every run-time value that selects a compile-time kernel variant goes through here, so
// that the set of variants a translation unit builds is visible in one place.
//
//   FA_CUTE_BOOL_SWITCH(cond, kName, [&] { launch<kName>(...); });
//
// instantiates the lambda's body for kName = true and false and runs the one that cond
// selects. Used by: run_fwd_sm80 (kMaskFree: no ragged tile and no causal mask).
#define FA_CUTE_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                            \
    if (COND) {                                    \
      constexpr static bool CONST_NAME = true;     \
      return __VA_ARGS__();                        \
    } else {                                       \
      constexpr static bool CONST_NAME = false;    \
      return __VA_ARGS__();                        \
    }                                              \
  }()
