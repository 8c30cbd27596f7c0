// dsv2-expert: an expert shard (DESIGN.md section 2; the process is
// ExpertShardProcess, its life service::Serve). Ready line on stdout:
//   dsv2-expert ready port=PORT metrics_port=PORT shard_id=N placement_version=V experts=K
//   resident_bytes=B ucx_address=HEX
// Flags: --help (each also from DSV2_<FLAG>; docs/flags.md).
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "base/version.h"
#include "expert_service/shard_process.h"
#include "service/serve.h"
#include "service/service_common.h"

namespace dsv2 {
namespace {

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-expert");
  ExpertShardOptions shard;
  service::ServeOptions serve;
  serve.binary = "dsv2-expert";
  // Attention nodes may be mid-dispatch: give their calls time to end.
  serve.server_shutdown_grace = absl::Seconds(5);
  std::optional<int64_t> num_shards;
  flags::FlagSet flags("dsv2-expert", std::string(VersionString()));
  flags.String("model", &shard.model_dir, "checkpoint directory (config.json + safetensors)")
      .Required();
  flags.Int("shard-id", &shard.shard_id, "this shard's id in the placement")
      .Range(0, service::kMaxShardId - 1);
  flags.Int("num-shards", &num_shards,
            "load this shard's experts of the default placement over N shards; 0 = start empty "
            "and wait for LoadExperts")
      .Min(0).DefaultText("1; 0 with --coordinator");
  flags.String("placement", &shard.placement_file,
               "placement file (JSON PlacementTable); overrides --num-shards");
  service::DefineCoordinatorFlags(flags, &serve,
                                  "register with --shard-id, heartbeat, and load the experts it "
                                  "assigns (--num-shards then defaults to 0)");
  service::DefineCommonFlags(flags, &shard.common);
  service::DefineWeightFlags(flags, &shard.common);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  shard.num_shards = num_shards.value_or(serve.coordinator ? 0 : 1);
  if (shard.num_shards > 0 && shard.shard_id >= shard.num_shards) {
    return flags.UsageError(absl::StrCat("--shard-id=", shard.shard_id,
                                         " must be in [0, --num-shards=", shard.num_shards, ")"));
  }
  if (absl::Status st = service::ApplyCommonFlags(shard.common, &serve); !st.ok()) {
    return service::StartupFailure(serve.binary, st.message());
  }
  shard.common.advertise_host = serve.advertise_host;
  shard.tls = serve.tls;
  if (serve.coordinator) shard.data_plane_keys = std::make_shared<transport::DataPlaneKeyring>();

  absl::StatusOr<std::unique_ptr<ExpertShardProcess>> process = ExpertShardProcess::Create(shard);
  if (!process.ok()) return service::StartupFailure(serve.binary, process.status().message());
  return service::Serve(serve, **process);
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) { return dsv2::service::RunMain("dsv2-expert", dsv2::Main, argc, argv); }
