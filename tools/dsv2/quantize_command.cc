#include "tools/dsv2/quantize_command.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "base/version.h"
#include "model/weight_flags.h"
#include "model/weights.h"
#include "tools/dsv2/quantize.h"

namespace dsv2 {

int QuantizeCommandMain(int argc, char** argv) {
  QuantizeOptions o;
  double max_shard_gb = 4.0;
  flags::FlagSet flags("dsv2 quantize", std::string(VersionString()));
  flags.String("model", &o.model_dir, "float (bf16/f16/f32) checkpoint directory").Required();
  flags.String("out", &o.out_dir, "output directory (new or empty)").Required();
  WeightFlags weight_flags;
  DefineWeightFlags(flags, "int8 or int4 (group-32, f16 scales; docs/numerics.md); required",
                    "as stored", &weight_flags);
  flags.Double("max-shard-gb", &max_shard_gb, "tensor data per safetensors shard, in GB (1e9)")
      .Min(0.001);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return *exit_code;
  absl::StatusOr<WeightQuantization> q =
      WeightQuantizationFromFlags(weight_flags, /*require_format=*/true);
  if (!q.ok()) return flags.UsageError(std::string(q.status().message()));
  o.quantization = *q;
  o.max_shard_bytes = static_cast<uint64_t>(max_shard_gb * 1e9);

  // One progress line on stderr: rewritten in place on a terminal, else a
  // line at most every 2 seconds (and the last one).
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  auto last = std::chrono::steady_clock::now() - std::chrono::hours(1);
  o.progress = [&](size_t done, size_t total, uint64_t bytes, uint64_t total_bytes) {
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last < std::chrono::seconds(tty ? 0 : 2)) return;
    last = now;
    std::fprintf(stderr, "%squantize: %zu/%zu tensors, %.2f/%.2f GB written%s", tty ? "\r" : "",
                 done, total, bytes / 1e9, total_bytes / 1e9, tty ? "" : "\n");
    if (tty && done == total) std::fputc('\n', stderr);
  };
  const absl::Status st = QuantizeCheckpoint(o);
  if (!st.ok()) {
    std::cerr << "dsv2 quantize: " << st.message() << "\n";
    return st.code() == absl::StatusCode::kInvalidArgument ||
                   st.code() == absl::StatusCode::kNotFound
               ? 2
               : 1;
  }
  std::cerr << "wrote " << WeightFormatName(o.quantization.format) << " checkpoint to " << o.out_dir
            << "\n";
  return 0;
}

}  // namespace dsv2
