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
// Ping-pong (DESIGN.md section 3): a step with enough rows is split into two
// micro-batches m0 and m1 of whole sequences, and each layer is cut at the
// expert dispatch into a first half (norms, MLA, gate, Send, shared experts)
// and a second half (Wait, combine). The halves run in the order
//   first(m0,l) first(m1,l) second(m0,l) first(m0,l+1) second(m1,l) ...
// so one micro-batch's attention runs while the other's rows are at the
// experts. Every row's computation is independent of the rows beside it, so
// the split changes no bit of any logit; one micro-batch is the same code
// with m1 absent.
//
// Thread-safety: one thread calls Step at a time (the engine thread); Step
// uses the context's ThreadPool internally.
#ifndef DSV2_ATTENTION_SERVICE_LAYER_LOOP_H_
#define DSV2_ATTENTION_SERVICE_LAYER_LOOP_H_

#include <array>
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
  // The request's id; the first sequence's id of a micro-batch is its
  // dispatches' DispatchContext::replica_key. 0 when the caller has none.
  uint64_t id = 0;
};

// What one step cost at the expert seam, for benchmarks (the fraction of the
// expert round trip that ping-pong hides). Every Step resets it and fills it
// once the batch is validated and its cache reserved, failed steps included.
struct StepStats {
  // 2 when the step ran as two ping-pong micro-batches, else 1.
  int32_t num_micro_batches = 0;
  // Rows (tokens) of each micro-batch; micro_batch_rows[1] is 0 without
  // ping-pong.
  std::array<int64_t, 2> micro_batch_rows = {0, 0};
  // Successful ExpertBackend::Send calls (one per MoE layer and micro-batch).
  int64_t num_dispatches = 0;
  // Wall time inside ExpertBackend::Send and ::Wait, summed over layers and
  // micro-batches. Wait time is the round trip that nothing overlapped; an
  // in-process backend computes inside Send instead.
  double expert_send_seconds = 0;
  double expert_wait_seconds = 0;
  // Wall time of the whole Step.
  double step_seconds = 0;
};

struct StepOutput {
  // Per sequence, row-major [positions, vocab] f32 raw logits.
  std::vector<std::vector<float>> logits;
  StepStats stats;
};

struct LayerLoopOptions {
  // A step is split into two micro-batches (ping-pong) when it has at least
  // this many rows and at least two sequences; <= 0 never splits.
  int64_t min_rows_for_micro_batches = 32;
};

// The rotary table of a config (MODEL_SPEC.md section 6).
kernels::RopeTable MakeRopeTable(const ModelConfig& config);

class LayerLoop {
 public:
  // All references must outlive the LayerLoop. The cache's dtype must be
  // the weights' activation dtype.
  LayerLoop(const NonExpertWeights& weights, LatentCache& cache, ExpertBackend& experts,
            kernels::CpuContext ctx, LayerLoopOptions options = {});

  // Takes effect from the next Step; call it from the thread that calls
  // Step. Options change scheduling only, never a logit.
  void set_options(const LayerLoopOptions& options) { options_ = options; }
  const LayerLoopOptions& options() const { return options_; }

  // Runs one step. On success every sequence's cache->num_tokens advances
  // by its token count and `out` holds the logits. Errors: InvalidArgument
  // (token id outside the vocabulary, position past max_position_embeddings,
  // empty batch entry), ResourceExhausted (cache full; nothing written),
  // Unavailable and others from the expert backend (no token count
  // advances: the same step can be re-run; a ticket still in flight for the
  // other micro-batch is abandoned with ExpertBackend::Forget).
  absl::Status Step(std::span<StepSequence> batch, StepOutput* out);

  // The MLA sublayer alone (absorbed form) for one sequence: writes the
  // latent rows of positions [seq.num_tokens, + n) of `layer` and returns the
  // o_proj output [n, D] for the normed inputs h [n, D]. Does not advance
  // seq.num_tokens. For tests against ReferenceMla.
  absl::Status MlaForTest(int64_t layer, SequenceCache& seq, const float* h, int64_t n,
                          float* out);

 private:
  struct Rows;        // per-micro-batch scratch
  struct MicroBatch;  // a micro-batch's sequences, rows and in-flight dispatch

  // The layer up to the expert dispatch: norms, MLA, then the dense FFN
  // (the layer is done) or gate, Send and shared experts (mb.in_flight).
  absl::Status BeginLayer(int64_t layer, MicroBatch& mb, StepStats& stats);
  // The rest of an MoE layer: Wait, combine, residual. REQUIRES: in_flight.
  absl::Status FinishLayer(MicroBatch& mb, StepStats& stats);
  // Every layer and the head for every micro-batch, in ping-pong order; on
  // failure, tickets still in flight are forgotten.
  absl::Status Forward(std::span<MicroBatch> mbs, StepOutput* out);
  // Final norm and lm_head for the micro-batch's sequences.
  void Head(const MicroBatch& mb, StepOutput* out);
  void Attention(int64_t layer, std::span<StepSequence> batch, Rows& rows);
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
  LayerLoopOptions options_;
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
