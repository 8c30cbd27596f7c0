#include "tests/common/child_process.h"

#include <cstdlib>

namespace dsv2::testing_util {

std::string BinDir() {
  const char* d = std::getenv("DSV2_TEST_BIN_DIR");
  return d != nullptr ? d : "build";
}

std::string SourceDir() { return DSV2_SOURCE_DIR; }

absl::StatusOr<std::unique_ptr<ChildProcess>> StartChild(const std::vector<std::string>& argv) {
  process::ChildOptions o;
  o.argv = argv;
  return ChildProcess::Start(o);
}

}  // namespace dsv2::testing_util
