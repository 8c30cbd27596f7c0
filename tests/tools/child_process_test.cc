// The process launcher (tools/process/child_process.h): exit statuses,
// signals, stdout lines, environment, stderr and stdin redirection, process
// groups, the signal mask, parent death and exec failures reported as a
// status.
#include "tools/process/child_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/common/wait_for.h"

namespace dsv2::process {
namespace {

using testing_util::WaitFor;

std::unique_ptr<ChildProcess> StartOrDie(ChildOptions o) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> c = ChildProcess::Start(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

std::unique_ptr<ChildProcess> Shell(const std::string& script, ChildOptions o = {}) {
  o.argv = {"/bin/sh", "-c", script};
  return StartOrDie(std::move(o));
}

// Every stdout line until EOF.
std::vector<std::string> Lines(ChildProcess& c) {
  std::vector<std::string> lines;
  while (true) {
    absl::StatusOr<std::string> line = c.ReadLine(absl::Seconds(60));
    if (!line.ok()) {
      EXPECT_EQ(line.status().code(), absl::StatusCode::kUnavailable) << line.status();
      return lines;
    }
    lines.push_back(*line);
  }
}

// A field of /proc/<pid>/status ("SigBlk", "PPid", ...).
std::string ProcStatusField(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field + ":")) {
      std::string v = line.substr(field.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

TEST(ChildProcess, ExitStatusIsReported) {
  auto c = Shell("exit 3");
  ASSERT_NE(c, nullptr);
  absl::StatusOr<int> st = c->Wait(absl::InfiniteFuture());
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 3);
  EXPECT_EQ(DescribeExitStatus(*st), "exited with status 3");
  EXPECT_EQ(c->exit_status(), *st);
  // Reaped: no signal can reach another process that took the pid.
  EXPECT_EQ(c->Signal(SIGTERM).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*c->Wait(absl::InfinitePast()), *st);
}

TEST(ChildProcess, TryWaitReapsWithoutBlocking) {
  auto sleeper = StartOrDie({.argv = {"/bin/sleep", "1000"}});
  ASSERT_NE(sleeper, nullptr);
  EXPECT_FALSE(sleeper->TryWait().has_value());
  EXPECT_EQ(sleeper->Stop(0, absl::Milliseconds(1)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(sleeper->Signal(SIGUSR1).ok());
  ASSERT_TRUE(WaitFor([&] { return sleeper->TryWait().has_value(); }, absl::Seconds(60)));
  EXPECT_TRUE(WIFSIGNALED(*sleeper->exit_status()));
  EXPECT_EQ(WTERMSIG(*sleeper->exit_status()), SIGUSR1);
}

TEST(ChildProcess, KillAndTerminate) {
  auto a = StartOrDie({.argv = {"/bin/sleep", "1000"}});
  ASSERT_NE(a, nullptr);
  const int killed = a->Kill();
  EXPECT_TRUE(WIFSIGNALED(killed) && WTERMSIG(killed) == SIGKILL) << killed;
  EXPECT_TRUE(absl::StartsWith(DescribeExitStatus(killed), "killed by signal 9 ("))
      << DescribeExitStatus(killed);
  // A child that exits on SIGTERM ends by it, within any grace.
  auto b = StartOrDie({.argv = {"/bin/sleep", "1000"}});
  ASSERT_NE(b, nullptr);
  const int termed = b->Terminate(absl::Hours(1));
  EXPECT_TRUE(WIFSIGNALED(termed) && WTERMSIG(termed) == SIGTERM) << termed;
  // One that ignores SIGTERM is SIGKILLed once the grace has passed.
  auto c = Shell("trap '' TERM; echo ready; exec /bin/sleep 1000");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(*c->ReadLine(absl::Seconds(60)), "ready");
  const int forced = c->Terminate(absl::Milliseconds(50));
  EXPECT_TRUE(WIFSIGNALED(forced) && WTERMSIG(forced) == SIGKILL) << forced;
}

TEST(ChildProcess, DestructorKillsAndReaps) {
  pid_t pid;
  {
    auto c = StartOrDie({.argv = {"/bin/sleep", "1000"}});
    ASSERT_NE(c, nullptr);
    pid = c->pid();
    ASSERT_EQ(kill(pid, 0), 0);
  }
  // Reaped, not a zombie: the pid no longer exists.
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(ChildProcess, StdoutLinesThenEof) {
  auto c = Shell("printf 'first\\nsecond\\n\\nlast without newline'");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(Lines(*c), (std::vector<std::string>{"first", "second", "", "last without newline"}));
  EXPECT_EQ(c->stdout_fd(), -1);
  EXPECT_EQ(c->ReadLine(absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(WEXITSTATUS(*c->Wait(absl::InfiniteFuture())), 0);
}

TEST(ChildProcess, ReadLineStopsAtItsDeadline) {
  auto c = Shell("echo one; exec /bin/sleep 1000");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(*c->ReadLine(absl::Seconds(60)), "one");
  // Nothing more comes: the deadline ends the wait, the child still runs.
  EXPECT_EQ(c->ReadLine(absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(c->TryWait().has_value());
}

TEST(ChildProcess, ReadAvailableNeverBlocks) {
  auto c = Shell("echo a; echo b; exec /bin/sleep 1000");
  ASSERT_NE(c, nullptr);
  // Until both lines are in, then the pipe stays open (the child sleeps).
  std::vector<std::string> lines;
  ASSERT_TRUE(WaitFor(
      [&] {
        EXPECT_TRUE(c->ReadAvailable());
        while (std::optional<std::string> l = c->TakeLine()) lines.push_back(*l);
        return lines.size() == 2;
      },
      absl::Seconds(60)));
  EXPECT_EQ(lines, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(c->ReadAvailable());  // nothing to read: returns at once
  EXPECT_FALSE(c->TakeLine().has_value());
}

TEST(ChildProcess, StdoutNotPipedGoesToTheParents) {
  auto c = StartOrDie({.argv = {"/bin/true"}, .pipe_stdout = false});
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->stdout_fd(), -1);
  EXPECT_EQ(c->ReadLine(absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(WEXITSTATUS(*c->Wait(absl::InfiniteFuture())), 0);
}

TEST(ChildProcess, EnvironmentIsInheritedWithAdditionsOrGivenExactly) {
  ASSERT_EQ(setenv("DSV2_PROCESS_TEST_INHERITED", "yes", 1), 0);
  ASSERT_EQ(setenv("DSV2_PROCESS_TEST_REPLACED", "old", 1), 0);
  auto c = StartOrDie({.argv = {"/usr/bin/env"},
                       .env = {"DSV2_PROCESS_TEST_ADDED=1", "DSV2_PROCESS_TEST_REPLACED=new"}});
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> env = Lines(*c);
  const auto has = [&](const std::string& e) { return std::count(env.begin(), env.end(), e); };
  EXPECT_EQ(has("DSV2_PROCESS_TEST_INHERITED=yes"), 1);
  EXPECT_EQ(has("DSV2_PROCESS_TEST_ADDED=1"), 1);
  EXPECT_EQ(has("DSV2_PROCESS_TEST_REPLACED=new"), 1);
  EXPECT_EQ(has("DSV2_PROCESS_TEST_REPLACED=old"), 0);

  auto exact = StartOrDie(
      {.argv = {"/usr/bin/env"}, .inherit_environment = false, .env = {"ONLY=this", "AND=that"}});
  ASSERT_NE(exact, nullptr);
  EXPECT_EQ(Lines(*exact), (std::vector<std::string>{"ONLY=this", "AND=that"}));
  unsetenv("DSV2_PROCESS_TEST_INHERITED");
  unsetenv("DSV2_PROCESS_TEST_REPLACED");
}

TEST(ChildProcess, StderrToAFileAndStdinFromDevNull) {
  const std::string path = ::testing::TempDir() + "/dsv2_process_test_stderr.log";
  { std::ofstream(path) << "old content that must be truncated\n"; }
  auto c = Shell("echo to-stderr >&2; cat; echo cat-saw-eof",
                 {.stderr_path = path, .stdin_from_dev_null = true});
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(Lines(*c), std::vector<std::string>{"cat-saw-eof"});
  EXPECT_EQ(WEXITSTATUS(*c->Wait(absl::InfiniteFuture())), 0);
  std::stringstream content;
  content << std::ifstream(path).rdbuf();
  EXPECT_EQ(content.str(), "to-stderr\n");
  // A stderr file that cannot be opened is an error before anything starts.
  absl::StatusOr<std::unique_ptr<ChildProcess>> bad =
      ChildProcess::Start({.argv = {"/bin/true"}, .stderr_path = "/nonexistent-dir/dsv2/x.log"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "/nonexistent-dir/dsv2/x.log"))
      << bad.status();
}

TEST(ChildProcess, OwnProcessGroupOnlyWhenAsked) {
  auto own = StartOrDie({.argv = {"/bin/sleep", "1000"}, .new_process_group = true});
  auto shared = StartOrDie({.argv = {"/bin/sleep", "1000"}});
  ASSERT_NE(own, nullptr);
  ASSERT_NE(shared, nullptr);
  // setpgid runs in the child before execve, and Start returns after execve.
  EXPECT_EQ(getpgid(own->pid()), own->pid());
  EXPECT_EQ(getpgid(shared->pid()), getpgrp());
}

TEST(ChildProcess, ChildStartsWithAnEmptySignalMask) {
  // `dsv2 up` blocks these for its signalfd; its children must not inherit
  // the mask (they would ignore Ctrl-C and SIGTERM).
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGCHLD);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &old), 0);
  auto c = Shell("echo started; exec /bin/sleep 1000");
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(*c->ReadLine(absl::Seconds(60)), "started");
  EXPECT_EQ(ProcStatusField(c->pid(), "SigBlk"), "0000000000000000");
  // SIGTERM reaches it (blocked, it would wait forever: the destructor
  // SIGKILLs it after the failure).
  absl::StatusOr<int> st = c->Stop(SIGTERM, absl::Seconds(60));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(WIFSIGNALED(*st) && WTERMSIG(*st) == SIGTERM) << DescribeExitStatus(*st);
}

TEST(ChildProcess, ExecFailureIsAnErrorNotAChildExiting127) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> missing =
      ChildProcess::Start({.argv = {"/nonexistent-dir/dsv2-no-such-binary", "--flag"}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(missing.status().message(),
            "cannot execute /nonexistent-dir/dsv2-no-such-binary: No such file or directory");
  // Not executable.
  const std::string script = ::testing::TempDir() + "/dsv2_process_test_not_executable";
  std::ofstream(script) << "#!/bin/sh\necho hi\n";
  ASSERT_EQ(chmod(script.c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<ChildProcess>> denied = ChildProcess::Start({.argv = {script}});
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "Permission denied")) << denied.status();
  // The failed children were reaped: this process has no child left.
  EXPECT_EQ(waitpid(-1, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  EXPECT_EQ(ChildProcess::Start({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChildProcess, DiesWithItsParent) {
  // This process adopts orphans, so the grandchild's end can be waited on.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t middle = fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    // The parent of the grandchild: starts it, reports its pid, dies
    // without running destructors (nothing kills the grandchild but
    // PR_SET_PDEATHSIG).
    close(fds[0]);
    absl::StatusOr<std::unique_ptr<ChildProcess>> c =
        ChildProcess::Start({.argv = {"/bin/sleep", "1000"}});
    const pid_t pid = c.ok() ? (*c)->pid() : -1;
    if (write(fds[1], &pid, sizeof pid) != sizeof pid) _exit(2);
    _exit(0);
  }
  close(fds[1]);
  pid_t grandchild = -1;
  ASSERT_EQ(read(fds[0], &grandchild, sizeof grandchild), static_cast<ssize_t>(sizeof grandchild));
  close(fds[0]);
  ASSERT_GT(grandchild, 0);
  int st = 0;
  ASSERT_EQ(waitpid(middle, &st, 0), middle);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  // The grandchild, now ours, ends by SIGKILL without anyone sending it.
  pid_t reaped = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        reaped = waitpid(grandchild, &st, WNOHANG);
        return reaped == grandchild;
      },
      absl::Seconds(60)));
  if (reaped != grandchild) {  // clean up after the failure
    kill(grandchild, SIGKILL);
    waitpid(grandchild, &st, 0);
  } else {
    EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << DescribeExitStatus(st);
  }
  prctl(PR_SET_CHILD_SUBREAPER, 0);
}

}  // namespace
}  // namespace dsv2::process
