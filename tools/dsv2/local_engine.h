// LocalEngine: the single-process engine behind `dsv2 run` — the attention
// service's LayerLoop with an in-process ExpertBackend whose handler is the
// expert service's ExpertCompute::Handle over every routed expert (DESIGN.md
// section 1: the composition happens here, in tools/, not in the libraries).
//
// Thread-safety: one thread uses an engine at a time.
#ifndef DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_
#define DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_

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
  // The model's config.json when the caller has already parsed it (it is
  // then not read again); nullopt = read it from model_dir.
  std::optional<ModelConfig> config;
};

class LocalEngine {
 public:
  static absl::StatusOr<std::unique_ptr<LocalEngine>> Open(const LocalEngineOptions& options);

  const ModelConfig& config() const { return config_; }
  const NonExpertWeights& weights() const { return *weights_; }
  LatentCache& cache() { return *cache_; }
  LayerLoop& loop() { return *loop_; }
  kernels::CpuIsa isa() const { return ctx_.isa; }

 private:
  LocalEngine() = default;

  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<kernels::ThreadPool> pool_;
  kernels::CpuContext ctx_;
  std::unique_ptr<NonExpertWeights> weights_;
  std::unique_ptr<ExpertCompute> shard_;
  std::unique_ptr<InProcessExpertBackend> backend_;
  std::unique_ptr<LatentCache> cache_;
  std::unique_ptr<LayerLoop> loop_;
};

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_LOCAL_ENGINE_H_
