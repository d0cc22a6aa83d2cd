#pragma once

// Every run-time value that selects a compile-time kernel variant goes through here, so
// that the set of variants a translation unit builds is visible in one place. Each macro
// instantiates the lambda's body once per case, with CONST_NAME a constexpr of that case,
// and runs the one the value selects:
//
//   FA_CUTE_BOOL_SWITCH(cond, kName, [&] { launch<kName>(...); });
//   FA_CUTE_MASK_MODE_SWITCH(mode, kMode, [&] { launch<kMode>(...); });
//
// Used by: Sm80FwdLaunch::dispatch (the FwdMaskMode of fwd_kernel_sm80: 4
// kernels per config and dtype) and Sm90FwdLaunch::dispatch (causal or not).

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

#define FA_CUTE_MASK_MODE_SWITCH(MODE, CONST_NAME, ...)                                \
  [&] {                                                                                 \
    switch (MODE) {                                                                     \
      case ::fa_cute::FwdMaskMode::kNone: {                                             \
        constexpr static ::fa_cute::FwdMaskMode CONST_NAME = ::fa_cute::FwdMaskMode::kNone; \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      case ::fa_cute::FwdMaskMode::kCausalEven: {                                       \
        constexpr static ::fa_cute::FwdMaskMode CONST_NAME =                            \
            ::fa_cute::FwdMaskMode::kCausalEven;                                        \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      case ::fa_cute::FwdMaskMode::kSoftcapWindow: {                                    \
        constexpr static ::fa_cute::FwdMaskMode CONST_NAME =                            \
            ::fa_cute::FwdMaskMode::kSoftcapWindow;                                     \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      default: {                                                                        \
        constexpr static ::fa_cute::FwdMaskMode CONST_NAME = ::fa_cute::FwdMaskMode::kGeneral; \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
    }                                                                                   \
  }()
