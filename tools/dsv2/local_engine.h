// LocalEngine: the single-process engine behind `dsv2 run` — the attention
// service's LayerLoop with an in-process ExpertBackend whose handler is the
// expert service's ExpertCompute::Handle over every routed expert (DESIGN.md
// section 1: the composition happens here, in tools/, not in the libraries).
//
// Thread-safety: one thread uses an engine at a time.
#ifndef DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_
#define DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "attention_service/expert_backend.h"
#include "attention_service/latent_cache.h"
#include "attention_service/layer_loop.h"
#include "expert_service/expert_compute.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace dsv2 {

struct LocalEngineOptions {
  std::string model_dir;
  int threads = 1;
  std::string cpu_isa;          // "" = DSV2_CPU_ISA or the best available
  int64_t cache_tokens = 4096;  // latent cache capacity
  bool verbose_load = false;    // load progress on stderr (big checkpoints only)
  // nullopt = the checkpoint's dtype (DESIGN.md section 7); kF32 runs a
  // bf16 checkpoint with f32 activations (numerics checks).
  std::optional<DType> activation_dtype;
  // Load-time quantization of the linear weights (none by default).
  WeightQuantization quantization;
  // The model's config.json when the caller has already parsed it (it is
  // then not read again); nullopt = read it from model_dir.
  std::optional<ModelConfig> config;
  // The layer loop's options. Ping-pong is off by default: in-process
  // experts compute inside Send, so there is nothing for it to hide.
  LayerLoopOptions loop_options{.min_rows_for_micro_batches = 0};
  // A hook in front of the experts (tests: fault injection, holding the
  // engine mid-step). Called once by Open with the in-process backend; the
  // layer loop then uses the returned backend, which may forward to
  // `inner` (the engine owns both; `inner` outlives the wrapper). Empty =
  // the in-process backend itself.
  std::function<std::unique_ptr<ExpertBackend>(ExpertBackend& inner)> wrap_backend;
};

class LocalEngine {
 public:
  static absl::StatusOr<std::unique_ptr<LocalEngine>> Open(const LocalEngineOptions& options);

  const ModelConfig& config() const { return config_; }
  const NonExpertWeights& weights() const { return *weights_; }
  LatentCache& cache() { return *cache_; }
  LayerLoop& loop() { return *loop_; }
  // The backend loop() dispatches to (the wrapper when wrap_backend is set).
  ExpertBackend& backend() { return wrapper_ ? *wrapper_ : *backend_; }
  kernels::CpuIsa isa() const { return ctx_.isa; }
  // The CPU context the loop runs on (ISA and the engine's thread pool).
  const kernels::CpuContext& context() const { return ctx_; }

 private:
  LocalEngine() = default;

  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<kernels::ThreadPool> pool_;
  kernels::CpuContext ctx_;
  std::unique_ptr<NonExpertWeights> weights_;
  std::unique_ptr<ExpertCompute> shard_;
  std::unique_ptr<InProcessExpertBackend> backend_;
  std::unique_ptr<ExpertBackend> wrapper_;  // from wrap_backend; null without
  std::unique_ptr<LatentCache> cache_;
  std::unique_ptr<LayerLoop> loop_;
};

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_
