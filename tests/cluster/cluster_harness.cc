#include "tests/cluster/cluster_harness.h"

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace dsv2::testing {

std::map<std::string, std::string> ParseReadyLine(const std::string& line) {
  std::map<std::string, std::string> out;
  for (absl::string_view field : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
    const size_t eq = field.find('=');
    if (eq == absl::string_view::npos) continue;
    out[std::string(field.substr(0, eq))] = std::string(field.substr(eq + 1));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> ReferenceOutput(const std::string& model_dir,
                                                     const std::vector<int32_t>& prompt,
                                                     int max_tokens,
                                                     const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {BinDir() + "/tools/dsv2",  "run",
                                   "--model",                 model_dir,
                                   "--prompt-ids",            absl::StrJoin(prompt, ","),
                                   "--max-tokens",            absl::StrCat(max_tokens),
                                   "--threads",               "1",
                                   "--json"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto child = StartChild(argv);
  if (!child.ok()) return child.status();
  // The JSON object is the last stdout line (streamed text comes first).
  std::string last;
  while (true) {
    absl::StatusOr<std::string> line = (*child)->ReadLine(absl::Seconds(60));
    if (!line.ok()) break;
    if (!line->empty() && (*line)[0] == '{') last = *line;
  }
  auto status = (*child)->Stop(SIGTERM, absl::Seconds(10));
  if (last.empty()) return absl::InternalError("dsv2 run printed no JSON");
  nlohmann::json j = nlohmann::json::parse(last, nullptr, false);
  if (j.is_discarded() || !j.contains("output_ids")) {
    return absl::InternalError(absl::StrCat("dsv2 run printed ", last));
  }
  return j["output_ids"].get<std::vector<int32_t>>();
}

absl::StatusOr<std::string> RunDsv2Json(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {BinDir() + "/tools/dsv2"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--json");
  auto child = StartChild(argv);
  if (!child.ok()) return child.status();
  std::string last;
  while (true) {
    absl::StatusOr<std::string> line = (*child)->ReadLine(absl::Seconds(120));
    if (!line.ok()) break;
    if (!line->empty() && (*line)[0] == '{') last = *line;
  }
  absl::StatusOr<int> status = (*child)->Stop(SIGTERM, absl::Seconds(10));
  if (last.empty()) {
    return absl::InternalError(absl::StrCat("dsv2 ", absl::StrJoin(args, " "),
                                            " printed no JSON (exit status ",
                                            status.ok() ? *status : -1, ")"));
  }
  return last;
}

}  // namespace dsv2::testing
