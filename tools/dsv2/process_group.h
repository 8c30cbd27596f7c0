// ProcessGroup: the child processes of `dsv2 up` (started by the project's
// launcher, tools/process/child_process.h: one stdout pipe each for the
// ready line, a process group of their own) and the parent's signals,
// multiplexed in one poll loop on a signalfd (SIGINT, SIGTERM, SIGCHLD) and
// the children's pipes. No thread is started and no signal handler runs.
//
// Thread-safety: one thread only. Construct it before any other thread of
// the process exists (it blocks SIGINT, SIGTERM and SIGCHLD in the calling
// thread, and threads started later inherit the mask). Each child dies with
// the parent (PR_SET_PDEATHSIG, SIGKILL); the destructor SIGKILLs and reaps
// every child still running.
#ifndef DSV2_TOOLS_DSV2_PROCESS_GROUP_H_
#define DSV2_TOOLS_DSV2_PROCESS_GROUP_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tools/process/child_process.h"

namespace dsv2 {

struct ChildSpec {
  std::string name;               // "coordinator", "expert-0", ... (logs, ready line)
  std::vector<std::string> argv;  // argv[0] is the executable's path
  // The child's environment, "NAME=value" each.
  std::vector<std::string> env;
  // Where the child's stderr goes: empty = the parent's stderr, else this
  // file (created or truncated).
  std::string stderr_path;
};

// A started child. Owned by its ProcessGroup; the pointer stays valid for
// the group's lifetime.
struct Child {
  std::string name;
  pid_t pid = -1;
  // The first stdout line (without '\n') once it has arrived.
  std::optional<std::string> ready_line;
  // Set once the child has exited and been reaped: the waitpid status.
  std::optional<int> exit_status;

  // Private to ProcessGroup: the launched process (stdout pipe, reaping).
  std::unique_ptr<process::ChildProcess> process;
};

using process::DescribeExitStatus;

class ProcessGroup {
 public:
  // Blocks SIGINT, SIGTERM and SIGCHLD and opens the signalfd.
  static absl::StatusOr<std::unique_ptr<ProcessGroup>> Create();
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Starts `spec` in a process group of its own, stdin from /dev/null,
  // stdout into a pipe the group reads; the child unblocks the signals and
  // dies with the parent (PR_SET_PDEATHSIG). An executable that cannot be
  // run is an error here ("cannot execute <path>: <reason>").
  absl::StatusOr<Child*> Start(const ChildSpec& spec);

  // What Poll saw.
  struct Events {
    int termination_signal = 0;  // SIGINT or SIGTERM, 0 if none
    std::vector<Child*> exited;  // children reaped during this call
    std::vector<Child*> ready;   // children whose first line arrived
  };
  // Waits until `deadline` or until something happens (a signal, a child's
  // exit, a child's first stdout line), whichever comes first; reads the
  // pipes and reaps exited children. Lines after the first are discarded.
  Events Poll(absl::Time deadline);

  // Sends SIGTERM to `child` and waits up to `grace` for it to exit, then
  // SIGKILLs it. A termination signal arriving meanwhile cuts the grace
  // short (a second Ctrl-C kills). Returns the exit status. Other children
  // that exit meanwhile are reaped too (their exit_status is set) and
  // appended to *others_exited when it is not null.
  int Stop(Child& child, absl::Duration grace, std::vector<Child*>* others_exited = nullptr);

  // SIGKILLs every running child and reaps it.
  void KillAll();

  const std::vector<std::unique_ptr<Child>>& children() const { return children_; }

 private:
  explicit ProcessGroup(int signal_fd) : signal_fd_(signal_fd) {}
  // Reaps every child that has exited; appends them to *exited.
  void Reap(std::vector<Child*>* exited);
  // Reads what `child`'s pipe holds; true when its first line completed.
  bool ReadPipe(Child& child);

  const int signal_fd_;
  std::vector<std::unique_ptr<Child>> children_;
};

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_PROCESS_GROUP_H_
