// Runs the `dsv2` binary of the build under test as a user runs it, for the
// tests of its commands (header-only: the binary is a separate process).
#ifndef DSV2_TESTS_COMMON_DSV2_COMMAND_H_
#define DSV2_TESTS_COMMON_DSV2_COMMAND_H_

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace dsv2::testing {

struct Dsv2Result {
  int exit_code = -1;  // -1 when it did not exit normally
  std::string out;     // stdout
  std::string err;     // stderr
};

// $DSV2_TEST_BIN_DIR/tools/dsv2 (CTest sets the variable to the build tree).
inline std::string Dsv2Binary() {
  const char* d = std::getenv("DSV2_TEST_BIN_DIR");
  return std::string(d ? d : ".") + "/tools/dsv2";
}

// Runs `dsv2 <args>` through the shell (`args` are shell words), with
// optional VAR=value prefixes in `env`; captures stdout and stderr.
inline Dsv2Result RunDsv2(const std::string& args, const std::string& env = "") {
  const std::string err_file =
      ::testing::TempDir() + "/dsv2_stderr_" + std::to_string(getpid()) + ".txt";
  const std::string cmd = env + " " + Dsv2Binary() + " " + args + " 2>" + err_file;
  Dsv2Result r;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  return r;
}

}  // namespace dsv2::testing

#endif  // DSV2_TESTS_COMMON_DSV2_COMMAND_H_
