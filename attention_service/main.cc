// dsv2-attention: an attention node (DESIGN.md section 2; the process is
// AttentionNodeProcess, its life service::Serve). Ready line on stdout:
//   dsv2-attention ready port=PORT metrics_port=PORT cache_tokens=N placement_version=V
// Flags: --help (each also from DSV2_<FLAG>; docs/flags.md).
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "attention_service/node_process.h"
#include "base/flags.h"
#include "base/version.h"
#include "service/serve.h"
#include "service/service_common.h"

namespace dsv2 {
namespace {

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-attention");
  AttentionNodeOptions node;
  service::ServeOptions serve;
  serve.binary = "dsv2-attention";
  std::string expert_shards;
  flags::FlagSet flags("dsv2-attention", std::string(VersionString()));
  flags.String("model", &node.model_dir, "checkpoint directory (config.json + safetensors)")
      .Required();
  flags.Int("cache-tokens", &node.cache_tokens, "latent cache capacity in tokens (64-token blocks)")
      .Min(1);
  flags.Int("max-step-tokens", &node.max_step_tokens,
            "token budget of one step: prefill chunk size").Min(1);
  flags.Int("max-running", &node.max_running, "sequences in one step").Min(1);
  flags.Int("max-waiting", &node.max_waiting, "admission queue bound").Min(0);
  flags.String("expert-shards", &expert_shards,
               "comma-separated gRPC addresses of the expert shards, shard 0 first: the default "
               "placement over them (version 1)");
  flags.String("placement", &node.placement_file,
               "placement file (JSON PlacementTable); overrides --expert-shards");
  flags.Duration("dispatch-timeout", &node.dispatch_timeout,
                 "deadline of one expert dispatch, re-sends included")
      .Min(absl::Milliseconds(1)).LegacyAlias("dispatch-timeout-ms", absl::Milliseconds(1));
  flags.Int("micro-batch-min-rows", &node.micro_batch_min_rows,
            "split a step into two ping-pong micro-batches from this many rows (0 = never)")
      .Min(0);
  service::DefineDrainFlag(flags, &serve);
  service::DefineCoordinatorFlags(flags, &serve,
                                  "register, heartbeat and take placements from it (then "
                                  "--expert-shards/--placement are not needed)");
  service::DefineCommonFlags(flags, &node.common);
  service::DefineWeightFlags(flags, &node.common);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (flags.was_set("expert-shards")) {
    node.expert_shards = absl::StrSplit(expert_shards, ',', absl::SkipEmpty());
    if (node.expert_shards.empty()) return flags.UsageError("--expert-shards lists no address");
  }
  if (absl::Status st = service::ApplyCommonFlags(node.common, &serve); !st.ok()) {
    return service::StartupFailure(serve.binary, st.message());
  }
  node.tls = serve.tls;
  if (serve.coordinator) node.data_plane_keys = std::make_shared<transport::DataPlaneKeyring>();
  node.hand_off_on_drain = serve.coordinator.has_value();

  absl::StatusOr<std::unique_ptr<AttentionNodeProcess>> process = AttentionNodeProcess::Create(node);
  if (!process.ok()) return service::StartupFailure(serve.binary, process.status().message());
  return service::Serve(serve, **process);
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) { return dsv2::service::RunMain("dsv2-attention", dsv2::Main, argc, argv); }
