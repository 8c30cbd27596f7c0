// ChildProcess: one child process started with fork + execve. The one
// launcher of the project: `dsv2 up`'s ProcessGroup, the cluster benchmark
// and the tests' cluster harness all start their children with it.
//
// Contract:
// - Start prepares everything the child needs before fork (the argv and
//   envp arrays, the stderr file, the pipes, the signal mask), so that
//   between fork and execve the child makes only async-signal-safe calls
//   (setpgid, prctl, getppid, sigprocmask, dup2, fcntl, execve, write,
//   _exit). The parent may be multi-threaded (gRPC, thread pools): another
//   thread may hold a lock (the allocator's, a logger's) at the fork.
// - A child that cannot be executed (no such file, not executable, a dup2
//   that failed) is reported by Start as an error naming the file, not as a
//   child that exits 127: the child writes errno to a close-on-exec pipe,
//   and Start reads it (EOF means execve succeeded) and reaps the child.
// - The child starts with an empty signal mask (a parent that blocks
//   SIGINT/SIGTERM/SIGCHLD for a signalfd must not pass the mask on) and,
//   unless death_signal is 0, gets death_signal when its parent dies
//   (PR_SET_PDEATHSIG). Linux sends it when the *thread* that called Start
//   exits: start children from a thread that outlives them (the main
//   thread). A parent that died before the prctl is noticed (getppid).
// - The destructor SIGKILLs and reaps a child not reaped yet, so a
//   ChildProcess never leaves a zombie or an orphan behind.
//
// Thread-safety: Start may be called from any thread. One ChildProcess is
// used by one thread at a time.
#ifndef DSV2_TOOLS_PROCESS_CHILD_PROCESS_H_
#define DSV2_TOOLS_PROCESS_CHILD_PROCESS_H_

#include <sys/types.h>

#include <csignal>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsv2::process {

// (Every member has an initializer, so designated initializers may name
// any subset: ChildProcess::Start({.argv = {...}, .new_process_group = true}).)
struct ChildOptions {
  // argv[0] is the executable's path (execve: no PATH search).
  std::vector<std::string> argv{};
  // The environment: the parent's with `env` added (an entry replaces the
  // parent's variable of the same name), or exactly `env` when
  // inherit_environment is false. "NAME=value" each.
  bool inherit_environment = true;
  std::vector<std::string> env{};
  // stdout into a pipe the parent reads (ReadLine, ReadAvailable), or the
  // parent's stdout.
  bool pipe_stdout = true;
  // stderr: empty = the parent's stderr, else this file (created or
  // truncated, 0644).
  std::string stderr_path{};
  // stdin from /dev/null instead of the parent's stdin.
  bool stdin_from_dev_null = false;
  // A process group of its own (setpgid(0, 0)): a terminal's Ctrl-C then
  // reaches only the parent, which stops the child itself.
  bool new_process_group = false;
  // Sent to the child when the parent (thread) dies; 0 = none.
  int death_signal = SIGKILL;
};

// The wait status of a child that something else reaped (a waitpid(-1)
// elsewhere in the process): its real status is lost.
inline constexpr int kReapedElsewhere = -1;

// "exited with status 3", "killed by signal 9 (Killed)".
std::string DescribeExitStatus(int wait_status);

class ChildProcess {
 public:
  // Forks and execs options.argv. InvalidArgument for an empty argv;
  // FailedPrecondition when stderr_path cannot be opened or the program
  // cannot be executed ("cannot execute <path>: <reason>"); Internal when
  // pipe/fork fail.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const ChildOptions& options);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // --- stdout (pipe_stdout)
  // The pipe's read end (non-blocking, for poll), -1 once it reached EOF or
  // when stdout is not piped.
  int stdout_fd() const { return out_fd_; }
  // Reads what the pipe holds now, without blocking. False once the pipe
  // reached EOF (the child closed stdout or exited).
  bool ReadAvailable();
  // The next complete line read so far (without '\n'), if any.
  std::optional<std::string> TakeLine();
  // Drops what was read and not taken. A caller that wants only the first
  // line keeps reading (and discarding) so that the child never blocks on a
  // full pipe.
  void DiscardBuffered() { buffer_.clear(); }
  // The next line, waiting until `deadline`: DeadlineExceeded then;
  // Unavailable at EOF (a last line without '\n' is returned first).
  absl::StatusOr<std::string> ReadLine(absl::Time deadline);
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout) {
    return ReadLine(absl::Now() + timeout);
  }

  // --- lifetime
  // Sends `sig` to the child (0 checks that it exists). FailedPrecondition
  // once it has been reaped (its pid may belong to another process then).
  absl::Status Signal(int sig);
  // The wait status once the child has exited (reaping it), without
  // blocking; nullopt while it runs.
  std::optional<int> TryWait();
  // Waits until the child exits: its wait status, or DeadlineExceeded at
  // `deadline` (the child keeps running).
  absl::StatusOr<int> Wait(absl::Time deadline);
  // Sends `sig` (0: none) and waits up to `timeout` for the exit.
  absl::StatusOr<int> Stop(int sig, absl::Duration timeout);
  // SIGTERM, then SIGKILL once `grace` has passed; the wait status.
  int Terminate(absl::Duration grace);
  // SIGKILL; the wait status.
  int Kill();
  // Set once the child has been reaped.
  const std::optional<int>& exit_status() const { return exit_status_; }

 private:
  ChildProcess(pid_t pid, int out_fd, int pid_fd) : pid_(pid), out_fd_(out_fd), pid_fd_(pid_fd) {}
  // waitpid; blocking or not.
  std::optional<int> Reap(bool block);

  const pid_t pid_;
  int out_fd_;        // stdout pipe's read end, -1 after EOF
  const int pid_fd_;  // pidfd for polling the exit, -1 when unsupported
  std::string buffer_;
  std::optional<int> exit_status_;
};

}  // namespace dsv2::process

#endif  // DSV2_TOOLS_PROCESS_CHILD_PROCESS_H_
