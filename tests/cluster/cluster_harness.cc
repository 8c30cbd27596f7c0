#include "tests/cluster/cluster_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace dsv2::testing {

std::string BinDir() {
  const char* d = std::getenv("DSV2_TEST_BIN_DIR");
  return d != nullptr ? d : "build";
}

std::string SourceDir() { return DSV2_SOURCE_DIR; }

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, fds[0]));
}

ChildProcess::~ChildProcess() {
  if (!exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  close(out_fd_);
}

absl::StatusOr<std::string> ChildProcess::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return absl::DeadlineExceededError("no line from child process in time");
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(out_fd_, buf, sizeof buf);
    if (n <= 0) return absl::UnavailableError("child process closed stdout (exited?)");
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<int> ChildProcess::Stop(int sig, absl::Duration timeout) {
  if (exited_) return absl::FailedPreconditionError("already stopped");
  kill(pid_, sig);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      return status;
    }
    if (absl::Now() >= deadline) return absl::DeadlineExceededError("child did not exit in time");
    absl::SleepFor(absl::Milliseconds(10));
  }
}

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
  auto child = ChildProcess::Start(argv);
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
  auto child = ChildProcess::Start(argv);
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
