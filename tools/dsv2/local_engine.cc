#include "tools/dsv2/local_engine.h"

#include <filesystem>
#include <iostream>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace dsv2 {

absl::StatusOr<std::unique_ptr<LocalEngine>> LocalEngine::Open(const LocalEngineOptions& o) {
  auto e = std::unique_ptr<LocalEngine>(new LocalEngine());
  std::error_code ec;
  if (!std::filesystem::is_directory(o.model_dir, ec)) {
    return absl::NotFoundError(absl::StrCat(o.model_dir, ": model directory not found"));
  }
  if (o.threads < 1 || o.threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads = ", o.threads, " must be in [1, 1024]"));
  }
  if (o.config) {
    e->config_ = *o.config;
  } else {
    DSV2_ASSIGN_OR_RETURN(e->config_, LoadModelConfig(o.model_dir + "/config.json"));
  }
  DSV2_ASSIGN_OR_RETURN(e->checkpoint_, Checkpoint::OpenDir(o.model_dir));
  DSV2_ASSIGN_OR_RETURN(e->ctx_.isa, kernels::ResolveCpuIsa(o.cpu_isa));
  e->pool_ = std::make_unique<kernels::ThreadPool>(o.threads);
  e->ctx_.pool = e->pool_.get();
  e->ctx_.quant_activations = o.quantization.int8_activations ? kernels::QuantActivations::kInt8
                                                              : kernels::QuantActivations::kF32;
  // Progress only for big checkpoints; small ones load in milliseconds.
  const bool verbose = o.verbose_load && e->checkpoint_->mapped_bytes() > (size_t{1} << 30);
  if (verbose) {
    std::cerr << "loading " << o.model_dir << " ("
              << e->checkpoint_->mapped_bytes() / (1 << 20) << " MiB mapped)\n";
  }
  DSV2_ASSIGN_OR_RETURN(e->weights_, NonExpertWeights::Load(e->config_, *e->checkpoint_,
                                                            o.activation_dtype, o.quantization));
  std::vector<int32_t> all(e->config_.n_routed_experts);
  std::iota(all.begin(), all.end(), 0);
  DSV2_ASSIGN_OR_RETURN(
      auto experts,
      ExpertWeightSet::Load(e->config_, *e->checkpoint_,
                            ExpertWeightSet::AllLayers(e->config_, all), o.quantization));
  // Resident before the first request, as an expert shard makes them:
  // otherwise the first prefill pays a page fault per 4 KiB of expert
  // weights.
  experts->Prefault();
  if (verbose) std::cerr << "loaded " << experts->size() << " routed experts\n";
  e->shard_ = std::make_unique<ExpertCompute>(e->config_, std::move(experts), e->ctx_);
  ExpertCompute* shard = e->shard_.get();
  e->backend_ = std::make_unique<InProcessExpertBackend>(
      [shard](const router::ExpertDispatch& d) { return shard->Handle(d); });
  if (o.wrap_backend) {
    e->wrapper_ = o.wrap_backend(*e->backend_);
    if (e->wrapper_ == nullptr) return absl::InvalidArgumentError("wrap_backend returned null");
  }
  DSV2_ASSIGN_OR_RETURN(
      e->cache_, LatentCache::Create(e->config_.num_hidden_layers, e->config_.latent_dim(),
                                     e->weights_->activation_dtype(),
                                     std::max<int64_t>(1, LatentCache::BlocksForTokens(o.cache_tokens))));
  e->loop_ = std::make_unique<LayerLoop>(*e->weights_, *e->cache_, e->backend(), e->ctx_,
                                         o.loop_options);
  return e;
}

}  // namespace dsv2
