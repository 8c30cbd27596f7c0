#include "tools/dsv2/up_command.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "base/version.h"
#include "inference.grpc.pb.h"
#include "kernels/cpu.h"
#include "model/weight_flags.h"
#include "model/weights.h"
#include "service/certificates.h"
#include "service/tls.h"
#include "tools/dsv2/default_model.h"
#include "tools/dsv2/process_group.h"

extern char** environ;

namespace dsv2 {
namespace {

namespace fs = std::filesystem;

constexpr char kCoordinatorBinary[] = "dsv2-coordinator";
constexpr char kAttentionBinary[] = "dsv2-attention";
constexpr char kExpertBinary[] = "dsv2-expert";
constexpr int64_t kMaxProcesses = 256;
// How often GetModelInfo is asked while waiting for the placement.
constexpr absl::Duration kInfoPollInterval = absl::Milliseconds(100);
// Stop order and patience: the coordinator drains live streams (its
// --drain-timeout-s defaults to 30 s), then the nodes (idle by then), then
// the shards. SIGKILL after the grace.
constexpr absl::Duration kCoordinatorGrace = absl::Seconds(40);
constexpr absl::Duration kAttentionGrace = absl::Seconds(40);
constexpr absl::Duration kExpertGrace = absl::Seconds(10);

// What `dsv2 up` runs (its flags, then the resolved binaries).
struct UpOptions {
  std::optional<std::string> model;  // --model; none: the default model
  std::string model_dir;             // what the cluster serves (resolved)
  std::optional<std::string> bin_dir;
  int64_t attention_nodes = 1;
  int64_t expert_shards = 2;
  int64_t port = 0;
  // Unset: the cores this process may run on, divided among the attention
  // nodes and expert shards (at least 1 each); the coordinator gets as many.
  std::optional<int64_t> threads;
  int64_t cache_tokens = 16384;
  // --weights / --experts-only / --lm-head-bf16, passed to every attention
  // node and expert shard.
  WeightFlags weight_flags;
  std::optional<std::string> ready_file;
  std::optional<std::string> log_dir;
  absl::Duration ready_timeout = absl::Seconds(120);
  // Security (docs/security.md): by default a throw-away authority and a
  // certificate per process in `tls_dir` (a temporary directory unless
  // --tls-dir), mutual TLS between the processes, TLS on the public port.
  bool insecure = false;
  std::optional<std::string> tls_dir_flag;
  std::string tls_dir;  // resolved; empty when insecure
  std::string coordinator_bin, attention_bin, expert_bin;
};

// The flags of `dsv2 up` into *o (the defaults are UpOptions').
void DefineUpFlags(flags::FlagSet& flags, UpOptions* o) {
  flags.String("model", &o->model, "checkpoint directory (config.json, safetensors, tokenizer)")
      .DefaultText("$DSV2_DEFAULT_MODEL, else the shipped demo model, <data dir>/demo-stories");
  flags.Int("attention-nodes", &o->attention_nodes, "attention nodes").Range(1, kMaxProcesses);
  flags.Int("expert-shards", &o->expert_shards, "expert shards").Range(1, kMaxProcesses);
  flags.Int("port", &o->port, "the coordinator's public port (0 = OS-chosen)").Range(0, 65535);
  flags.String("ready-file", &o->ready_file, "also write the ready line to this file (atomically)");
  flags.Int("threads", &o->threads, "compute threads of each process").Range(1, 1024)
      .DefaultText("the cores this process may run on (CPU affinity) / (attention nodes + expert "
                   "shards), at least 1");
  flags.Int("cache-tokens", &o->cache_tokens, "latent-cache capacity of each attention node")
      .Min(1);
  DefineWeightFlags(flags,
                    "quantize the linear weights at load on every attention node and expert "
                    "shard: none, int8 or int4 (as dsv2 run --weights)",
                    "as stored", &o->weight_flags);
  DefineQuantActivationsFlag(flags, &o->weight_flags);
  flags.String("bin-dir", &o->bin_dir,
               "where dsv2-coordinator, dsv2-attention, dsv2-expert are")
      .DefaultText("next to dsv2, else the build tree, else PATH");
  flags.String("log-dir", &o->log_dir, "write each child's stderr to DIR/NAME.log")
      .DefaultText("this stderr");
  flags.Duration("ready-timeout", &o->ready_timeout,
                 "stop everything and exit 1 if not ready by then")
      .Above(absl::ZeroDuration())
      .LegacyAlias("ready-timeout-s", absl::Seconds(1));
  flags.Bool("insecure", &o->insecure,
             "plaintext everywhere, no certificates (default: a throw-away certificate "
             "authority and a certificate per process, mutual TLS between the processes, TLS "
             "on the public port; the ready line names the authority as tls_ca=)");
  flags
      .String("tls-dir", &o->tls_dir_flag,
              "write the throw-away authority's certificate (ca.crt) and each process's "
              "certificate and key here, and keep them")
      .DefaultText("a temporary directory, removed at exit");
}

// The cluster's throw-away certificates in `dir`: ca.crt (the authority's
// key is never written: nothing else can be issued), and NAME.crt/NAME.key
// for the coordinator and every member, each naming its identity
// (service/tls.h) and valid for localhost/127.0.0.1 for 30 days.
absl::Status MakeClusterCertificates(const UpOptions& o) {
  absl::StatusOr<service::CertificateAuthority> ca =
      service::CertificateAuthority::Create("dsv2 up throw-away authority");
  if (!ca.ok()) return ca.status();
  {
    std::ofstream f(fs::path(o.tls_dir) / "ca.crt", std::ios::trunc);
    f << ca->pem().cert;
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", o.tls_dir, "/ca.crt"));
  }
  std::vector<std::string> names = {"coordinator"};
  for (int64_t i = 0; i < o.expert_shards; ++i) names.push_back(absl::StrCat("expert-", i));
  for (int64_t i = 0; i < o.attention_nodes; ++i) names.push_back(absl::StrCat("attention-", i));
  for (const std::string& name : names) {
    if (absl::Status st = service::WriteLoopbackMemberCertificate(*ca, o.tls_dir, name); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

// --tls-cert/--tls-key/--tls-ca of process `name` (none when insecure).
std::vector<std::string> TlsFlags(const UpOptions& o, const std::string& name) {
  if (o.tls_dir.empty()) return {};
  const fs::path dir(o.tls_dir);
  return {"--tls-cert", (dir / (name + ".crt")).string(),
          "--tls-key",  (dir / (name + ".key")).string(),
          "--tls-ca",   (dir / "ca.crt").string()};
}

void Log(const std::string& msg) { std::cerr << "dsv2 up: " << msg << std::endl; }

// A directory made with mkdtemp (mode 0700) and removed with its contents
// when this is destroyed.
class TemporaryDirectory {
 public:
  static absl::StatusOr<TemporaryDirectory> Create(const std::string& prefix) {
    std::error_code ec;
    fs::path base = fs::temp_directory_path(ec);
    if (ec) base = "/tmp";
    std::string templ = (base / (prefix + "-XXXXXX")).string();
    if (mkdtemp(templ.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot make a directory ", templ));
    }
    return TemporaryDirectory(std::move(templ));
  }
  TemporaryDirectory(TemporaryDirectory&& o) noexcept : path_(std::exchange(o.path_, "")) {}
  TemporaryDirectory& operator=(TemporaryDirectory&&) = delete;
  ~TemporaryDirectory() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TemporaryDirectory(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// The directory of the running dsv2 executable ("" if unknown).
fs::path ExecutableDir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

bool IsExecutable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && access(p.c_str(), X_OK) == 0;
}

// --bin-dir alone when given; else next to dsv2, the build-tree sibling
// folder, PATH.
absl::StatusOr<std::string> FindBinary(const std::string& name, const std::string& sibling_dir,
                                       const std::optional<std::string>& bin_dir,
                                       const fs::path& exe_dir) {
  std::vector<fs::path> candidates;
  if (bin_dir) {
    candidates.push_back(fs::path(*bin_dir) / name);
  } else if (!exe_dir.empty()) {
    candidates.push_back(exe_dir / name);
    candidates.push_back(exe_dir.parent_path() / sibling_dir / name);
  }
  if (!bin_dir) {
    if (const char* path = std::getenv("PATH")) {
      for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
        candidates.push_back(fs::path(std::string(dir)) / name);
      }
    }
  }
  std::vector<std::string> tried;
  for (const fs::path& c : candidates) {
    if (IsExecutable(c)) return fs::absolute(c).string();
    tried.push_back(c.parent_path().string());
  }
  return absl::NotFoundError(
      absl::StrCat("cannot find the executable ", name, " (looked in ",
                   tried.empty() ? std::string("nothing") : absl::StrJoin(tried, ", "),
                   bin_dir ? ")" : "; build it, or pass --bin-dir)"));
}

// This process's environment minus the DSV2_<FLAG> variables of `dsv2 up`'s
// own flags and DSV2_TLS_*: a child reading e.g. DSV2_EXPERT_SHARDS (dsv2-attention's
// static shard list) would misread a value meant for `dsv2 up`.
std::vector<std::string> ChildEnvironment() {
  UpOptions unused;
  flags::FlagSet up_flags("dsv2 up", "");
  DefineUpFlags(up_flags, &unused);
  std::vector<std::string> drop;
  for (const std::string& var : up_flags.EnvironmentVariables()) drop.push_back(var + "=");
  // `dsv2 up` decides the children's TLS: a DSV2_TLS_* of the caller's
  // environment would turn it on behind --insecure's back.
  for (const char* var : {"DSV2_TLS_CERT=", "DSV2_TLS_KEY=", "DSV2_TLS_CA="}) drop.push_back(var);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var = *e;
    bool keep = true;
    for (const std::string& d : drop) keep = keep && !absl::StartsWith(var, d);
    if (keep) env.push_back(var);
  }
  return env;
}

// Writes `line` + '\n' to a temporary file beside `path` and renames it over
// `path`, so a reader sees no file or the whole line.
absl::Status WriteReadyFile(const std::string& path, const std::string& line) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << line << "\n";
    f.flush();
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

// "" once GetModelInfo shows the cluster serving: the expected numbers of
// nodes and shards, a complete placement, every node on its version. Else
// what is still missing.
std::string ClusterNotReadyReason(dsv2::v1::Inference::Stub& stub, int64_t attention_nodes,
                                  int64_t expert_shards, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(2))));
  dsv2::v1::ModelInfo info;
  const grpc::Status st = stub.GetModelInfo(&ctx, dsv2::v1::GetModelInfoRequest(), &info);
  if (!st.ok()) return absl::StrCat("GetModelInfo failed: ", st.error_message());
  if (info.attention_nodes_size() != attention_nodes ||
      info.expert_shards_size() != expert_shards || !info.placement_complete()) {
    return absl::StrCat("the coordinator has ", info.attention_nodes_size(), " of ",
                        attention_nodes, " attention nodes and ", info.expert_shards_size(), " of ",
                        expert_shards, " expert shards; placement version ",
                        info.placement_version(),
                        info.placement_complete() ? " complete" : " incomplete");
  }
  for (const dsv2::v1::AttentionNodeInfo& n : info.attention_nodes()) {
    if (n.placement_version() != info.placement_version()) {
      return absl::StrCat("attention node ", n.address(), " serves placement version ",
                          n.placement_version(), ", not yet ", info.placement_version());
    }
  }
  return "";
}


// Stops the coordinator (it drains), then the attention nodes, then the
// shards.
void StopInOrder(ProcessGroup& group) {
  const auto stop_role = [&](absl::string_view prefix, absl::Duration grace) {
    for (const auto& c : group.children()) {
      if (!absl::StartsWith(c->name, prefix) || c->exit_status) continue;
      std::vector<Child*> others;  // died on their own meanwhile
      const int status = group.Stop(*c, grace, &others);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        Log(absl::StrCat(c->name, " (pid ", c->pid, ") stopped: ", DescribeExitStatus(status)));
      }
      for (const Child* o : others) {
        Log(absl::StrCat(o->name, " (pid ", o->pid, ") ", DescribeExitStatus(*o->exit_status)));
      }
    }
  };
  stop_role("coordinator", kCoordinatorGrace);
  stop_role("attention-", kAttentionGrace);
  stop_role("expert-", kExpertGrace);
}

// What went wrong when a child's first line is not its ready line.
std::string CheckReadyLine(const Child& c, const std::string& binary) {
  if (absl::StartsWith(*c.ready_line, binary + " ready")) return "";
  return absl::StrCat(c.name, " printed '", *c.ready_line, "' instead of its ready line");
}

int RunCluster(const UpOptions& o) {
  auto group_or = ProcessGroup::Create();
  if (!group_or.ok()) {
    Log(std::string(group_or.status().message()));
    return 1;
  }
  ProcessGroup& group = **group_or;
  const std::vector<std::string> env = ChildEnvironment();
  const absl::Time deadline = absl::Now() + o.ready_timeout;
  const auto start = [&](const std::string& name,
                         std::vector<std::string> argv) -> absl::StatusOr<Child*> {
    ChildSpec spec;
    spec.name = name;
    spec.argv = std::move(argv);
    spec.env = env;
    if (o.log_dir) spec.stderr_path = (fs::path(*o.log_dir) / (name + ".log")).string();
    return group.Start(spec);
  };
  const auto log_hint = [&](const std::string& name) {
    return o.log_dir
               ? absl::StrCat(" (log: ", (fs::path(*o.log_dir) / (name + ".log")).string(), ")")
               : std::string();
  };
  // Start-up failure: everything is killed (the group's destructor).
  const auto fail = [&](const std::string& msg) {
    Log(msg);
    group.KillAll();
    return 1;
  };
  const std::string threads = absl::StrCat(o.threads.value_or(std::max<int64_t>(
      1, kernels::AvailableCpuCores() / (o.attention_nodes + o.expert_shards))));

  // 1. The coordinator, for its ports: the public one, and the internal one
  // (membership) that the members are given.
  const auto with_tls = [&](const std::string& name, std::vector<std::string> argv) {
    const std::vector<std::string> tls = TlsFlags(o, name);
    argv.insert(argv.end(), tls.begin(), tls.end());
    return argv;
  };
  auto coordinator = start(
      "coordinator", with_tls("coordinator", {o.coordinator_bin, "--model", o.model_dir, "--host",
                                              "127.0.0.1", "--port", absl::StrCat(o.port),
                                              "--internal-port", "0", "--threads", threads}));
  if (!coordinator.ok()) return fail(std::string(coordinator.status().message()));
  while (!(*coordinator)->ready_line) {
    const ProcessGroup::Events ev = group.Poll(deadline);
    if (ev.termination_signal != 0) {
      StopInOrder(group);
      return 0;
    }
    if ((*coordinator)->exit_status) {
      return fail(absl::StrCat("coordinator exited before it was ready: ",
                               DescribeExitStatus(*(*coordinator)->exit_status),
                               log_hint("coordinator")));
    }
    if (absl::Now() >= deadline) {
      return fail(absl::StrCat("coordinator not ready after ",
                               absl::FormatDuration(o.ready_timeout), log_hint("coordinator")));
    }
  }
  if (std::string bad = CheckReadyLine(**coordinator, kCoordinatorBinary); !bad.empty()) {
    return fail(bad);
  }
  int port = 0, internal_port = 0;
  for (absl::string_view f : absl::StrSplit(*(*coordinator)->ready_line, ' ')) {
    if (absl::ConsumePrefix(&f, "port=") && !absl::SimpleAtoi(f, &port)) port = 0;
    if (absl::ConsumePrefix(&f, "internal_port=") && !absl::SimpleAtoi(f, &internal_port)) {
      internal_port = 0;
    }
  }
  if (port <= 0 || internal_port <= 0) {
    return fail(absl::StrCat("no port or internal_port in the coordinator's ready line '",
                             *(*coordinator)->ready_line, "'"));
  }
  const std::string endpoint = absl::StrCat("127.0.0.1:", port);
  const std::string membership = absl::StrCat("127.0.0.1:", internal_port);

  // Load-time quantization flags, the same on every member.
  std::vector<std::string> weight_flags = {"--weights", o.weight_flags.weights};
  if (o.weight_flags.experts_only) weight_flags.push_back("--experts-only");
  if (o.weight_flags.lm_head_bf16) weight_flags.push_back("--lm-head-bf16");
  weight_flags.insert(weight_flags.end(),
                      {"--quant-activations", o.weight_flags.quant_activations});
  const auto with_weight_flags = [&](std::vector<std::string> argv) {
    argv.insert(argv.end(), weight_flags.begin(), weight_flags.end());
    return argv;
  };

  // 2. Shards, then attention nodes (both register with the coordinator).
  std::vector<std::pair<Child*, std::string>> members;  // child, binary name
  for (int64_t i = 0; i < o.expert_shards; ++i) {
    const std::string name = absl::StrCat("expert-", i);
    auto c = start(
        name,
        with_tls(name, with_weight_flags({o.expert_bin, "--model", o.model_dir, "--shard-id",
                                          absl::StrCat(i), "--coordinator", membership, "--threads",
                                          threads, "--host", "127.0.0.1", "--port", "0"})));
    if (!c.ok()) return fail(std::string(c.status().message()));
    members.emplace_back(*c, kExpertBinary);
  }
  for (int64_t i = 0; i < o.attention_nodes; ++i) {
    const std::string name = absl::StrCat("attention-", i);
    auto c = start(
        name, with_tls(name, with_weight_flags({o.attention_bin, "--model", o.model_dir,
                                                "--coordinator", membership, "--cache-tokens",
                                                absl::StrCat(o.cache_tokens), "--threads", threads,
                                                "--host", "127.0.0.1", "--port", "0"})));
    if (!c.ok()) return fail(std::string(c.status().message()));
    members.emplace_back(*c, kAttentionBinary);
  }

  // 3. Every ready line, then the coordinator's view: all registered, the
  // placement complete and served by every node. The channel (and gRPC's
  // threads) exist only after the last fork.
  const std::string ca_file =
      o.tls_dir.empty() ? std::string() : (fs::path(o.tls_dir) / "ca.crt").string();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      service::PublicChannelCredentials(ca_file);
  if (!credentials.ok()) return fail(std::string(credentials.status().message()));
  auto channel = grpc::CreateChannel(endpoint, *credentials);
  auto stub = dsv2::v1::Inference::NewStub(channel);
  std::string waiting_for = "the ready lines";
  absl::Time next_info = absl::InfinitePast();
  while (true) {
    bool all_ready = true;
    for (const auto& [c, binary] : members) {
      if (c->exit_status) {
        return fail(absl::StrCat(c->name, " exited before the cluster was ready: ",
                                 DescribeExitStatus(*c->exit_status), log_hint(c->name)));
      }
      if (!c->ready_line) {
        all_ready = false;
        waiting_for = absl::StrCat("the ready line of ", c->name);
        continue;
      }
      if (std::string bad = CheckReadyLine(*c, binary); !bad.empty()) return fail(bad);
    }
    if ((*coordinator)->exit_status) {
      return fail(absl::StrCat("coordinator exited before the cluster was ready: ",
                               DescribeExitStatus(*(*coordinator)->exit_status),
                               log_hint("coordinator")));
    }
    if (all_ready && absl::Now() >= next_info) {
      waiting_for = ClusterNotReadyReason(*stub, o.attention_nodes, o.expert_shards, deadline);
      if (waiting_for.empty()) break;
      next_info = absl::Now() + kInfoPollInterval;
    }
    if (absl::Now() >= deadline) {
      return fail(absl::StrCat("not ready after ", absl::FormatDuration(o.ready_timeout),
                               ": waiting for ", waiting_for));
    }
    const ProcessGroup::Events ev =
        group.Poll(all_ready ? std::min(deadline, next_info) : deadline);
    if (ev.termination_signal != 0) {
      StopInOrder(group);
      return 0;
    }
  }

  // 4. The ready line.
  // Each process's /metrics port, from its own ready line ("" if none).
  const auto metrics_port = [](const std::string& ready) -> std::string {
    for (absl::string_view f : absl::StrSplit(ready, ' ')) {
      if (absl::ConsumePrefix(&f, "metrics_port=")) return std::string(f);
    }
    return "";
  };
  const auto append = [&](std::string& out, const std::string& name, pid_t pid,
                          const std::string& ready) {
    absl::StrAppend(&out, " ", name, "=", pid);
    if (const std::string m = metrics_port(ready); !m.empty()) {
      absl::StrAppend(&out, " ", name, ".metrics_port=", m);
    }
  };
  std::string line = absl::StrCat("dsv2 ready endpoint=", endpoint);
  if (!ca_file.empty()) absl::StrAppend(&line, " tls_ca=", ca_file);
  append(line, "coordinator", (*coordinator)->pid, *(*coordinator)->ready_line);
  for (const absl::string_view role : {"attention-", "expert-"}) {
    for (const auto& [c, binary] : members) {
      if (absl::StartsWith(c->name, role)) append(line, c->name, c->pid, *c->ready_line);
    }
  }
  if (o.ready_file) {
    if (absl::Status st = WriteReadyFile(*o.ready_file, line); !st.ok()) {
      StopInOrder(group);
      return fail(std::string(st.message()));
    }
  }
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);

  // 5. Serve until a signal or the coordinator's death.
  while (true) {
    const ProcessGroup::Events ev = group.Poll(absl::InfiniteFuture());
    bool coordinator_died = false;
    for (const Child* c : ev.exited) {
      Log(absl::StrCat(c->name, " (pid ", c->pid, ") ", DescribeExitStatus(*c->exit_status),
                       log_hint(c->name)));
      coordinator_died = coordinator_died || c == *coordinator;
    }
    if (coordinator_died) {
      Log("the coordinator is gone: stopping the cluster");
      StopInOrder(group);
      return 1;
    }
    if (ev.termination_signal != 0) {
      Log(absl::StrCat("stopping (", strsignal(ev.termination_signal), ")"));
      StopInOrder(group);
      return 0;
    }
  }
}

}  // namespace

int UpCommandMain(int argc, char** argv) {
  UpOptions o;
  flags::FlagSet flags("dsv2 up", std::string(VersionString()));
  DefineUpFlags(flags, &o);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return *exit_code;
  if (absl::StatusOr<WeightQuantization> q = WeightQuantizationFromFlags(o.weight_flags); !q.ok()) {
    return flags.UsageError(std::string(q.status().message()));
  }

  const fs::path exe_dir = ExecutableDir();
  const std::optional<std::string>& bin_dir = o.bin_dir;
  struct Wanted {
    const char* name;
    const char* build_dir;
    std::string* out;
  };
  for (const Wanted& w : {Wanted{kCoordinatorBinary, "coordinator", &o.coordinator_bin},
                          Wanted{kAttentionBinary, "attention_service", &o.attention_bin},
                          Wanted{kExpertBinary, "expert_service", &o.expert_bin}}) {
    auto path = FindBinary(w.name, w.build_dir, bin_dir, exe_dir);
    if (!path.ok()) {
      std::cerr << "dsv2 up: " << path.status().message() << "\n";
      return 1;
    }
    *w.out = *path;
  }
  if (o.log_dir) {
    std::error_code ec;
    fs::create_directories(*o.log_dir, ec);
    if (ec) {
      std::cerr << "dsv2 up: cannot create --log-dir " << *o.log_dir << ": " << ec.message()
                << "\n";
      return 1;
    }
  }
  auto model = ResolveModelDir(o.model);
  if (!model.ok()) {
    std::cerr << "dsv2 up: " << model.status().message() << "\n";
    return 1;
  }
  o.model_dir = *model;
  if (o.ready_file) {
    // A stale line from an earlier run must not look like this run's.
    std::error_code ec;
    fs::remove(*o.ready_file, ec);
  }
  // The throw-away certificates; a temporary directory goes when we do.
  std::optional<TemporaryDirectory> tmp;
  if (!o.insecure) {
    if (o.tls_dir_flag) {
      std::error_code ec;
      // A new directory is private (0700); keys are 0600 in any case.
      if (!fs::exists(*o.tls_dir_flag, ec) && mkdir(o.tls_dir_flag->c_str(), 0700) != 0) {
        ec = std::error_code(errno, std::generic_category());
      }
      if (ec) {
        std::cerr << "dsv2 up: cannot create --tls-dir " << *o.tls_dir_flag << ": " << ec.message()
                  << "\n";
        return 1;
      }
      o.tls_dir = *o.tls_dir_flag;
    } else {
      absl::StatusOr<TemporaryDirectory> t = TemporaryDirectory::Create("dsv2-up-tls");
      if (!t.ok()) {
        std::cerr << "dsv2 up: " << t.status().message() << "\n";
        return 1;
      }
      tmp.emplace(*std::move(t));
      o.tls_dir = tmp->path();
    }
    if (absl::Status st = MakeClusterCertificates(o); !st.ok()) {
      std::cerr << "dsv2 up: cannot make the cluster's certificates: " << st.message() << "\n";
      return 1;
    }
  }
  return RunCluster(o);
}

}  // namespace dsv2
