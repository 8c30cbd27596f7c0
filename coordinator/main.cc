// dsv2-coordinator: the public endpoint of a dsv2 cluster (DESIGN.md
// section 2; the process is CoordinatorProcess, its life service::Serve with
// server reflection). Ready line on stdout:
//   dsv2-coordinator ready port=PORT [internal_port=PORT] metrics_port=PORT
// Flags: --help (each also from DSV2_<FLAG>; docs/flags.md).
#include <spdlog/spdlog.h>

#include <optional>

#include "base/flags.h"
#include "base/version.h"
#include "coordinator/coordinator_process.h"
#include "service/api_keys.h"
#include "service/serve.h"
#include "service/service_common.h"

namespace dsv2 {
namespace {

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-coordinator");
  coordinator::CoordinatorProcessOptions process_options;
  coordinator::CoordinatorOptions& co = process_options.coordinator;
  service::ServeOptions serve;
  serve.binary = "dsv2-coordinator";
  serve.reflection = true;
  serve.public_port = true;
  service::CommonFlags common;
  std::string api_key_file;
  flags::FlagSet flags("dsv2-coordinator", std::string(VersionString()));
  flags.String("model", &process_options.model_dir,
               "checkpoint directory: config.json (+ tokenizer.json, tokenizer_config.json)")
      .Required();
  flags.Int("max-queue", &co.admission.max_queued,
            "requests that may wait for an attention node; beyond: RESOURCE_EXHAUSTED")
      .Min(0);
  flags.Duration("heartbeat-interval", &co.heartbeat_interval, "how often nodes heartbeat")
      .Min(absl::Milliseconds(10)).LegacyAlias("heartbeat-interval-ms", absl::Milliseconds(1));
  flags.Duration("heartbeat-timeout", &co.heartbeat_timeout,
                 "a node silent this long is declared dead and removed")
      .Min(absl::Milliseconds(20)).LegacyAlias("heartbeat-timeout-ms", absl::Milliseconds(1));
  flags.Duration("load-experts-timeout", &co.load_experts_timeout,
                 "deadline of one shard's LoadExperts when the placement changes")
      .Min(absl::Seconds(1)).LegacyAlias("load-experts-timeout-s", absl::Seconds(1));
  flags
      .Int("internal-port", &serve.internal_port,
           "serve the membership service (Register, Heartbeat, Leave) on this port instead "
           "of --port (0 = OS-chosen, in the ready line as internal_port=); members' "
           "--coordinator names it; reflection on --port then lists only the public API")
      .Range(0, 65535)
      .DefaultText("none: on --port");
  flags.String("api-key-file", &api_key_file,
               "API keys of the public API, one per line (re-read when the file changes); "
               "calls must send \"authorization: Bearer KEY\"; empty = no key needed");
  service::DefineDrainFlag(flags, &serve);
  service::DefineCommonFlags(flags, &common);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (co.heartbeat_timeout <= co.heartbeat_interval) {
    return flags.UsageError("--heartbeat-timeout must be larger than --heartbeat-interval");
  }
  if (absl::Status st = service::ApplyCommonFlags(common, &serve); !st.ok()) {
    return service::StartupFailure(serve.binary, st.message());
  }
  if (!api_key_file.empty()) {
    absl::StatusOr<std::unique_ptr<service::ApiKeys>> keys = service::ApiKeys::Load(api_key_file);
    if (!keys.ok()) return service::StartupFailure(serve.binary, keys.status().message());
    spdlog::info("API keys: {} from {}", (*keys)->key_count(), api_key_file);
    if (!serve.internal_port) {
      spdlog::warn(
          "--api-key-file guards the public API only: without --internal-port the membership "
          "service (Register, Heartbeat, Leave) shares the public port unauthenticated");
    }
    co.api_keys = *std::move(keys);
  }
  co.tls = serve.tls;
  process_options.host = common.host;
  process_options.metrics_port = common.metrics_port;

  absl::StatusOr<std::unique_ptr<coordinator::CoordinatorProcess>> process =
      coordinator::CoordinatorProcess::Create(std::move(process_options));
  if (!process.ok()) return service::StartupFailure(serve.binary, process.status().message());
  return service::Serve(serve, **process);
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  return dsv2::service::RunMain("dsv2-coordinator", dsv2::Main, argc, argv);
}
