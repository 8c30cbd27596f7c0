// Real-process cluster harness for tests: starts dsv2-expert and
// dsv2-attention binaries on loopback (real UCX, real gRPC), reads their
// ready lines, and computes single-process references with `dsv2 run`.
#ifndef DSV2_TESTS_CLUSTER_CLUSTER_HARNESS_H_
#define DSV2_TESTS_CLUSTER_CLUSTER_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsv2::testing {

// The build directory (DSV2_TEST_BIN_DIR) and source root.
std::string BinDir();
std::string SourceDir();

// A child process whose stdout is a pipe; it dies with the test
// (PR_SET_PDEATHSIG) and is killed by the destructor if still running.
class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv);
  ~ChildProcess();

  // The first stdout line, waiting up to `timeout`.
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);
  // Sends `sig` and waits up to `timeout` for the exit; returns the exit
  // status as from waitpid, or DeadlineExceeded.
  absl::StatusOr<int> Stop(int sig, absl::Duration timeout);
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int out_fd) : pid_(pid), out_fd_(out_fd) {}
  pid_t pid_;
  int out_fd_;
  std::string buffer_;
  bool exited_ = false;
};

// "key=value" fields of a ready line.
std::map<std::string, std::string> ParseReadyLine(const std::string& line);

// Runs `dsv2 run --json --prompt-ids ...` and returns output_ids.
absl::StatusOr<std::vector<int32_t>> ReferenceOutput(const std::string& model_dir,
                                                     const std::vector<int32_t>& prompt,
                                                     int max_tokens,
                                                     const std::vector<std::string>& extra = {});

// Runs `dsv2 <args> --json` and returns the JSON object it printed (its
// last stdout line starting with '{').
absl::StatusOr<std::string> RunDsv2Json(const std::vector<std::string>& args);

}  // namespace dsv2::testing

#endif  // DSV2_TESTS_CLUSTER_CLUSTER_HARNESS_H_
