// The tests' child processes: the project's launcher
// (tools/process/child_process.h) with the settings every test wants
// (stdout on a pipe for the ready line, stderr on the test's stderr, the
// environment inherited, death with the test), and where the binaries are.
#ifndef DSV2_TESTS_COMMON_CHILD_PROCESS_H_
#define DSV2_TESTS_COMMON_CHILD_PROCESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/process/child_process.h"

namespace dsv2::testing_util {

using process::ChildProcess;

// The build directory (DSV2_TEST_BIN_DIR, set by CTest; "build" without
// it) and the source root.
std::string BinDir();
std::string SourceDir();

// Starts argv (argv[0] a path) with stdout on a pipe (ChildProcess::ReadLine)
// and everything else inherited; the child is SIGKILLed when the test (the
// calling thread) dies and by the ChildProcess destructor. Call it from the
// test's main thread or from a thread that outlives the child.
absl::StatusOr<std::unique_ptr<ChildProcess>> StartChild(const std::vector<std::string>& argv);

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_CHILD_PROCESS_H_
