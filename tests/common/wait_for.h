// WaitFor: the tests' one way to wait for something another thread or
// process does. It polls `condition` with a short backoff (1 ms doubling to
// 50 ms) until it holds or `deadline` passes, so a test waits exactly as long
// as the behaviour takes and never sleeps a guessed time. The deadline only
// bounds a failure: it is never the thing a test checks.
//
//   ASSERT_TRUE(WaitFor([&] { return Status().running() == 1; }, absl::Seconds(30)));
//
// Thread-safety: `condition` runs on the calling thread; it must do its own
// locking.
#ifndef DSV2_TESTS_COMMON_WAIT_FOR_H_
#define DSV2_TESTS_COMMON_WAIT_FOR_H_

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace dsv2::testing_util {

// True (an AssertionSuccess) as soon as `condition()` is true; an
// AssertionFailure saying how long it waited once `deadline` has passed with
// the condition still false. The condition is checked once more at the
// deadline.
template <typename Condition>
::testing::AssertionResult WaitFor(Condition&& condition, absl::Time deadline) {
  const absl::Time start = absl::Now();
  absl::Duration backoff = absl::Milliseconds(1);
  while (true) {
    if (condition()) return ::testing::AssertionSuccess();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return ::testing::AssertionFailure()
             << "condition still false after " << absl::FormatDuration(now - start);
    }
    absl::SleepFor(std::min(backoff, deadline - now));
    backoff = std::min(backoff * 2, absl::Milliseconds(50));
  }
}

template <typename Condition>
::testing::AssertionResult WaitFor(Condition&& condition, absl::Duration timeout) {
  return WaitFor(std::forward<Condition>(condition), absl::Now() + timeout);
}

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_WAIT_FOR_H_
