#pragma once

// The host tests' check: EXPECT(cond, printf-args) counts a pass or prints the failure with
// its location and goes on, so one run reports every broken property; expect_summary()
// prints the counts and gives the process's exit status.

#include <cstdio>

inline int g_passed = 0;
inline int g_failed = 0;

#define EXPECT(cond, ...)                                             \
  do {                                                                \
    if (cond) {                                                       \
      ++g_passed;                                                     \
    } else {                                                          \
      ++g_failed;                                                     \
      std::printf("FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

inline int expect_summary() {
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
