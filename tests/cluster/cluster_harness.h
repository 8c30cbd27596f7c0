// Real-process cluster harness for tests: the ready-line format of
// dsv2-expert, dsv2-attention and dsv2-coordinator (started on loopback with
// real UCX and real gRPC through tests/common's StartChild), and
// single-process references computed with `dsv2 run`.
#ifndef DSV2_TESTS_CLUSTER_CLUSTER_HARNESS_H_
#define DSV2_TESTS_CLUSTER_CLUSTER_HARNESS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/common/child_process.h"

namespace dsv2::testing {

// Child processes and the build/source directories (tests/common).
using testing_util::BinDir;
using testing_util::ChildProcess;
using testing_util::SourceDir;
using testing_util::StartChild;

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
