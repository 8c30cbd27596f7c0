// LayerLoop: the one forward-pass implementation (DESIGN.md sections 1, 3
// and 7). It runs a batch of sequences (prefill chunks and decode tokens
// mixed) through embedding, every layer's MLA over the latent cache, the
// dense FFN or the MoE (gate, dispatch through ExpertBackend, shared experts
// while the dispatch is in flight, combine), the final norm and lm_head.
//
// MLA always runs in the absorbed form over the latent cache, prefill
// included (MODEL_SPEC.md section 5), reducing over keys block by block
// from position 0 with an online softmax. Together with row-invariant
// kernels this makes a token's logits independent of chunk boundaries,
// batch companions and thread count.
//
// Thread-safety: one thread calls Step at a time (the engine thread); Step
// uses the context's ThreadPool internally.
#ifndef DSV2_ATTENTION_SERVICE_LAYER_LOOP_H_
#define DSV2_ATTENTION_SERVICE_LAYER_LOOP_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "attention_service/expert_backend.h"
#include "attention_service/latent_cache.h"
#include "kernels/cpu.h"
#include "kernels/ops.h"
#include "model/weights.h"

namespace dsv2 {

// One sequence's part of a step: `tokens` at positions
// [cache->num_tokens, cache->num_tokens + tokens.size()).
struct StepSequence {
  SequenceCache* cache = nullptr;
  std::span<const int32_t> tokens;
  // Logits for every position of `tokens` (tests) instead of the last only.
  bool all_logits = false;
};

struct StepOutput {
  // Per sequence, row-major [positions, vocab] f32 raw logits.
  std::vector<std::vector<float>> logits;
};

// The rotary table of a config (MODEL_SPEC.md section 6).
kernels::RopeTable MakeRopeTable(const ModelConfig& config);

class LayerLoop {
 public:
  // All references must outlive the LayerLoop. The cache's dtype must be
  // the weights' activation dtype.
  LayerLoop(const NonExpertWeights& weights, LatentCache& cache, ExpertBackend& experts,
            kernels::CpuContext ctx);

  // Runs one step. On success every sequence's cache->num_tokens advances
  // by its token count and `out` holds the logits. Errors: InvalidArgument
  // (token id outside the vocabulary, position past max_position_embeddings,
  // empty batch entry), ResourceExhausted (cache full; nothing written),
  // Unavailable and others from the expert backend (no token count
  // advances: the same step can be re-run).
  absl::Status Step(std::span<StepSequence> batch, StepOutput* out);

  // The MLA sublayer alone (absorbed form) for one sequence: writes the
  // latent rows of positions [seq.num_tokens, + n) of `layer` and returns the
  // o_proj output [n, D] for the normed inputs h [n, D]. Does not advance
  // seq.num_tokens. For tests against ReferenceMla.
  absl::Status MlaForTest(int64_t layer, SequenceCache& seq, const float* h, int64_t n,
                          float* out);

 private:
  struct Rows;  // per-step scratch

  void Attention(int64_t layer, std::span<StepSequence> batch, Rows& rows);
  absl::Status Ffn(int64_t layer, Rows& rows);
  void Mlp(const MlpWeights& w, const float* h, int64_t n, float* out);
  void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, bool round);
  // Activations (rounded to act_) as a GEMM X operand; the q_lat and
  // attention-sum operands are full f32 and use the default kF32.
  kernels::XValues ExactX() const {
    return act_ == DType::kBF16 ? kernels::XValues::kBf16Exact : kernels::XValues::kF32;
  }

  const NonExpertWeights& weights_;
  const ModelConfig& config_;
  LatentCache& cache_;
  ExpertBackend& experts_;
  const kernels::CpuContext ctx_;
  const DType act_;
  const kernels::RopeTable rope_;
  const float softmax_scale_;
};

// The reference (non-absorbed) MLA of MODEL_SPEC.md section 4 for one
// sequence of T tokens at positions 0..T-1, kept as a test oracle for the
// absorbed form: h [T, D] (normed layer input) -> out [T, D] (o_proj output,
// f32, unrounded).
void ReferenceMla(const ModelConfig& config, const AttentionWeights& w,
                  const kernels::RopeTable& rope, DType act, const float* h, int64_t T,
                  float* out);

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_LAYER_LOOP_H_
