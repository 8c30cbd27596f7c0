#include "attention_service/layer_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/ffn.h"
#include "router/gate.h"

namespace dsv2 {
namespace {

// q_a_layernorm and kv_a_layernorm always use 1e-6 (MODEL_SPEC section 3).
constexpr float kLatentNormEps = 1e-6f;

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The first sequence of m1 when `batch` splits into two micro-batches, or
// batch.size() when it stays one: m0 is a prefix and m1 the rest (order kept,
// so concatenating them gives the step's row order), cut where the row counts
// are closest (the first such cut on a tie); the imbalance is at most the
// rows of the sequence at the cut.
size_t MicroBatchSplit(std::span<const StepSequence> batch, int64_t min_rows) {
  int64_t total = 0;
  for (const StepSequence& sq : batch) total += static_cast<int64_t>(sq.tokens.size());
  if (min_rows <= 0 || batch.size() < 2 || total < min_rows) return batch.size();
  size_t best = 1;
  int64_t best_gap = std::numeric_limits<int64_t>::max(), prefix = 0;
  for (size_t k = 1; k < batch.size(); ++k) {
    prefix += static_cast<int64_t>(batch[k - 1].tokens.size());
    const int64_t gap = std::abs(2 * prefix - total);
    if (gap < best_gap) {
      best = k;
      best_gap = gap;
    }
  }
  return best;
}

}  // namespace

kernels::RopeTable MakeRopeTable(const ModelConfig& c) {
  const size_t R = static_cast<size_t>(c.qk_rope_head_dim);
  if (c.rope.type == RopeConfig::Type::kDefault) {
    return kernels::DefaultRopeTable(R, static_cast<float>(c.rope.theta));
  }
  kernels::YarnParams p;
  p.theta = static_cast<float>(c.rope.theta);
  p.factor = static_cast<float>(c.rope.factor);
  p.original_max_position_embeddings =
      static_cast<double>(c.rope.original_max_position_embeddings);
  p.beta_fast = c.rope.beta_fast;
  p.beta_slow = c.rope.beta_slow;
  p.mscale = c.rope.mscale;
  p.mscale_all_dim = c.rope.mscale_all_dim;
  p.has_attention_factor = c.rope.attention_factor.has_value();
  p.attention_factor = c.rope.attention_factor.value_or(1.0);
  p.truncate = c.rope.truncate;
  return kernels::YarnRopeTable(R, p);
}

struct LayerLoop::Rows {
  int64_t n = 0;             // rows in the (micro-)batch
  std::vector<int64_t> pos;  // absolute position of each row
  std::vector<int32_t> seq;  // (micro-)batch index of each row's sequence
  std::vector<float> x;      // [n, D] residual stream
  std::vector<float> h;      // [n, D] normed
  std::vector<float> tmp;    // [n, D]
};

struct LayerLoop::MicroBatch {
  int32_t index = 0;  // DispatchContext::micro_batch
  size_t first = 0;   // step batch index of seqs[0]
  std::span<StepSequence> seqs;
  Rows rows;  // rows.seq indexes `seqs`
  // Between BeginLayer's Send and FinishLayer's Wait of an MoE layer.
  bool in_flight = false;
  uint64_t ticket = 0;
  std::vector<router::RowRoute> routes;  // [n]
  std::vector<float> shared;             // [n, D]; empty without shared experts
};

LayerLoop::LayerLoop(const NonExpertWeights& weights, LatentCache& cache, ExpertBackend& experts,
                     kernels::CpuContext ctx, LayerLoopOptions options)
    : weights_(weights),
      config_(weights.config()),
      cache_(cache),
      experts_(experts),
      ctx_(ctx),
      act_(weights.activation_dtype()),
      rope_(MakeRopeTable(weights.config())),
      softmax_scale_(static_cast<float>(weights.config().softmax_scale())),
      options_(options) {}

void LayerLoop::Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, bool round) {
  // Linear inputs are activations, already rounded to the activation dtype.
  dsv2::Linear(ctx_, x, w.cols, w, y, w.rows, n, ExactX());
  if (round) RoundInPlace(y, static_cast<size_t>(n * w.rows), act_);
}

void LayerLoop::Mlp(const MlpWeights& w, const float* h, int64_t n, float* out) {
  SwiGluFfn(ctx_, w.gate, w.up, w.down, /*gate_up=*/nullptr, h, n, act_, out);
}

absl::Status LayerLoop::Step(std::span<StepSequence> batch, StepOutput* out) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const Clock::time_point step_start = Clock::now();
  out->stats = StepStats{};
  if (batch.empty()) return absl::InvalidArgumentError("step has no sequences");
  // Validate everything before touching the cache.
  for (size_t s = 0; s < batch.size(); ++s) {
    const StepSequence& sq = batch[s];
    if (sq.cache == nullptr || sq.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", s, " has no tokens"));
    }
    for (int32_t t : sq.tokens) {
      if (t < 0 || t >= V) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", V, ")"));
      }
    }
    const int64_t end = sq.cache->num_tokens + static_cast<int64_t>(sq.tokens.size());
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence needs ", end,
                                                     " positions; max_position_embeddings is ",
                                                     c.max_position_embeddings));
    }
  }
  // Reserve cache blocks; undo on failure so nothing changes.
  std::vector<size_t> blocks_before(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    blocks_before[s] = batch[s].cache->blocks.size();
    const absl::Status st = cache_.Reserve(
        *batch[s].cache, batch[s].cache->num_tokens + static_cast<int64_t>(batch[s].tokens.size()));
    if (!st.ok()) {
      for (size_t r = 0; r <= s; ++r) {
        SequenceCache& sc = *batch[r].cache;
        SequenceCache extra;
        extra.blocks.assign(sc.blocks.begin() + blocks_before[r], sc.blocks.end());
        sc.blocks.resize(blocks_before[r]);
        cache_.Release(extra);
      }
      return st;
    }
  }
  const size_t split = MicroBatchSplit(batch, options_.min_rows_for_micro_batches);
  MicroBatch mbs[2];
  const size_t num_mbs = split < batch.size() ? 2 : 1;
  for (size_t m = 0; m < num_mbs; ++m) {
    MicroBatch& mb = mbs[m];
    mb.index = static_cast<int32_t>(m);
    mb.first = m == 0 ? 0 : split;
    mb.seqs = batch.subspan(mb.first, (m == 0 ? split : batch.size()) - mb.first);
    Rows& rows = mb.rows;
    for (size_t s = 0; s < mb.seqs.size(); ++s) {
      for (size_t i = 0; i < mb.seqs[s].tokens.size(); ++i) {
        rows.pos.push_back(mb.seqs[s].cache->num_tokens + static_cast<int64_t>(i));
        rows.seq.push_back(static_cast<int32_t>(s));
      }
    }
    rows.n = static_cast<int64_t>(rows.pos.size());
    rows.x.resize(rows.n * D);
    rows.h.resize(rows.n * D);
    rows.tmp.resize(rows.n * D);
    int64_t r = 0;
    for (const StepSequence& sq : mb.seqs) {
      for (int32_t t : sq.tokens) weights_.embed().RowToF32(t, &rows.x[(r++) * D]);
    }
    out->stats.micro_batch_rows[m] = rows.n;
  }
  out->stats.num_micro_batches = static_cast<int32_t>(num_mbs);
  out->logits.assign(batch.size(), {});
  const absl::Status st = Forward(std::span<MicroBatch>(mbs, num_mbs), out);
  out->stats.step_seconds = SecondsSince(step_start);
  DSV2_RETURN_IF_ERROR(st);
  for (StepSequence& sq : batch) sq.cache->num_tokens += static_cast<int64_t>(sq.tokens.size());
  return absl::OkStatus();
}

absl::Status LayerLoop::Forward(std::span<MicroBatch> mbs, StepOutput* out) {
  // Ping-pong order (DESIGN.md section 3): before a micro-batch begins layer
  // l it finishes its layer l-1, whose dispatch was in flight while the other
  // micro-batch began layer l-1 (or l). With one micro-batch this is the
  // plain Send, shared experts, Wait of every layer.
  absl::Status st = [&]() -> absl::Status {
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      for (MicroBatch& mb : mbs) {
        if (mb.in_flight) DSV2_RETURN_IF_ERROR(FinishLayer(mb, out->stats));
        DSV2_RETURN_IF_ERROR(BeginLayer(l, mb, out->stats));
      }
    }
    // m0's head overlaps m1's last dispatch.
    for (MicroBatch& mb : mbs) {
      if (mb.in_flight) DSV2_RETURN_IF_ERROR(FinishLayer(mb, out->stats));
      Head(mb, out);
    }
    return absl::OkStatus();
  }();
  if (!st.ok()) {
    for (MicroBatch& mb : mbs) {
      if (mb.in_flight) experts_.Forget(mb.ticket);
      mb.in_flight = false;
    }
  }
  return st;
}

absl::Status LayerLoop::BeginLayer(int64_t l, MicroBatch& mb, StepStats& stats) {
  const ModelConfig& c = config_;
  const LayerWeights& lw = weights_.layer(l);
  Rows& rows = mb.rows;
  const int64_t n = rows.n, D = c.hidden_size, E = c.n_routed_experts;
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int64_t r = 0; r < n; ++r) {
    kernels::RmsNorm(&rows.x[r * D], lw.input_norm.data(), D, eps, act_, &rows.h[r * D]);
  }
  Attention(l, mb.seqs, rows);  // rows.tmp = attention output
  for (int64_t i = 0; i < n * D; ++i) rows.x[i] += rows.tmp[i];
  RoundInPlace(rows.x.data(), rows.x.size(), act_);
  for (int64_t r = 0; r < n; ++r) {
    kernels::RmsNorm(&rows.x[r * D], lw.post_norm.data(), D, eps, act_, &rows.h[r * D]);
  }
  if (!lw.is_moe) {
    Mlp(lw.dense, rows.h.data(), n, rows.tmp.data());
    for (int64_t i = 0; i < n * D; ++i) rows.x[i] += rows.tmp[i];
    RoundInPlace(rows.x.data(), rows.x.size(), act_);
    return absl::OkStatus();
  }
  // Gate in fp32 (input and weight cast to fp32, MODEL_SPEC section 7).
  std::vector<float> logits(n * E);
  Linear(rows.h.data(), n, lw.router, logits.data(), false);
  const router::GateParams gp = router::GateParams::FromConfig(c);
  mb.routes.resize(n);
  router::ExpertDispatch d;
  d.layer = static_cast<int32_t>(l);
  d.num_rows = static_cast<int32_t>(n);
  d.hidden = static_cast<int32_t>(D);
  d.dtype = act_;
  for (int64_t r = 0; r < n; ++r) {
    mb.routes[r] = router::Gate(gp, std::span<const float>(&logits[r * E], E));
    for (int32_t e : mb.routes[r].experts) d.assignments.push_back({static_cast<int32_t>(r), e});
  }
  d.activations.resize(n * D * DTypeSize(act_));
  FromF32(rows.h.data(), n * D, act_, d.activations.data());
  const DispatchContext dc{mb.index, mb.seqs.front().id};
  const Clock::time_point sent = Clock::now();
  absl::StatusOr<uint64_t> ticket = experts_.Send(std::move(d), dc);
  stats.expert_send_seconds += SecondsSince(sent);
  if (!ticket.ok()) return ticket.status();
  ++stats.num_dispatches;
  mb.in_flight = true;
  mb.ticket = *ticket;
  // Shared experts overlap the dispatch's round trip.
  mb.shared.clear();
  if (c.n_shared_experts > 0) {
    mb.shared.resize(n * D);
    Mlp(lw.shared, rows.h.data(), n, mb.shared.data());
  }
  return absl::OkStatus();
}

absl::Status LayerLoop::FinishLayer(MicroBatch& mb, StepStats& stats) {
  const ModelConfig& c = config_;
  Rows& rows = mb.rows;
  const int64_t n = rows.n, D = c.hidden_size;
  mb.in_flight = false;  // waited on exactly once, whatever Wait returns
  const Clock::time_point waited = Clock::now();
  absl::StatusOr<router::ExpertReply> reply = experts_.Wait(mb.ticket);
  stats.expert_wait_seconds += SecondsSince(waited);
  if (!reply.ok()) return reply.status();
  const size_t K = static_cast<size_t>(c.num_experts_per_tok);
  const size_t want = static_cast<size_t>(n) * K * D * DTypeSize(act_);
  if (reply->dtype != act_ || reply->hidden != D || reply->outputs.size() != want) {
    return absl::InternalError(
        absl::StrCat("expert reply has ", reply->outputs.size(), " bytes; expected ", want));
  }
  // Combine: assignments are in (row, ascending expert) order.
  std::vector<float> expert_rows(K * D);
  std::vector<const float*> ptrs(K);
  for (int64_t r = 0; r < n; ++r) {
    for (size_t k = 0; k < K; ++k) {
      ToF32(reply->outputs.data() + (r * K + k) * D * DTypeSize(act_), act_, D,
            &expert_rows[k * D]);
      ptrs[k] = &expert_rows[k * D];
    }
    float* y = &rows.tmp[r * D];
    router::Combine(mb.routes[r].weights, ptrs, D, act_, y);
    if (!mb.shared.empty()) {
      for (int64_t i = 0; i < D; ++i) y[i] += mb.shared[r * D + i];
      RoundInPlace(y, D, act_);
    }
  }
  for (int64_t i = 0; i < n * D; ++i) rows.x[i] += rows.tmp[i];
  RoundInPlace(rows.x.data(), rows.x.size(), act_);
  return absl::OkStatus();
}

void LayerLoop::Head(const MicroBatch& mb, StepOutput* out) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // Final norm + lm_head on the rows whose logits are wanted. The sequences
  // that want one row (decode, and a prefill's last position) share one
  // lm_head product, so a batch reads lm_head once, not once per sequence
  // (it is the largest matrix of a decode step); the bits are the same
  // (a row's result does not depend on the other rows, kernels/cpu.h).
  // A sequence that wants all its rows (prompt logprobs) gets its own.
  std::vector<float> normed;
  std::vector<std::pair<size_t, int64_t>> single;  // (sequence, its last row): last row only
  int64_t r0 = 0;
  for (size_t s = 0; s < mb.seqs.size(); ++s) {
    const int64_t len = static_cast<int64_t>(mb.seqs[s].tokens.size());
    if (!mb.seqs[s].all_logits) {
      single.emplace_back(s, r0 + len - 1);
      r0 += len;
      continue;
    }
    normed.resize(len * D);
    for (int64_t i = 0; i < len; ++i) {
      kernels::RmsNorm(&mb.rows.x[(r0 + i) * D], weights_.final_norm().data(), D, eps, act_,
                       &normed[i * D]);
    }
    std::vector<float>& logits = out->logits[mb.first + s];
    logits.resize(len * V);
    Linear(normed.data(), len, weights_.lm_head(), logits.data(), false);
    r0 += len;
  }
  if (single.empty()) return;
  const int64_t count = static_cast<int64_t>(single.size());
  normed.resize(count * D);
  for (int64_t i = 0; i < count; ++i) {
    kernels::RmsNorm(&mb.rows.x[single[i].second * D], weights_.final_norm().data(), D, eps, act_,
                     &normed[i * D]);
  }
  if (count == 1) {
    std::vector<float>& logits = out->logits[mb.first + single[0].first];
    logits.resize(V);
    Linear(normed.data(), 1, weights_.lm_head(), logits.data(), false);
    return;
  }
  std::vector<float> all(count * V);
  Linear(normed.data(), count, weights_.lm_head(), all.data(), false);
  for (int64_t i = 0; i < count; ++i) {
    out->logits[mb.first + single[i].first].assign(all.begin() + i * V, all.begin() + (i + 1) * V);
  }
}

absl::Status LayerLoop::MlaForTest(int64_t layer, SequenceCache& seq, const float* h, int64_t n,
                                   float* out) {
  const int64_t D = config_.hidden_size;
  if (n <= 0) return absl::InvalidArgumentError("MlaForTest needs at least one row");
  DSV2_RETURN_IF_ERROR(cache_.Reserve(seq, seq.num_tokens + n));
  std::vector<int32_t> dummy_tokens(n, 0);
  StepSequence s{&seq, dummy_tokens, false};
  Rows rows;
  rows.n = n;
  for (int64_t i = 0; i < n; ++i) {
    rows.pos.push_back(seq.num_tokens + i);
    rows.seq.push_back(0);
  }
  rows.h.assign(h, h + n * D);
  rows.tmp.resize(n * D);
  Attention(layer, std::span<StepSequence>(&s, 1), rows);
  std::copy(rows.tmp.begin(), rows.tmp.end(), out);
  return absl::OkStatus();
}

void LayerLoop::Attention(int64_t l, std::span<StepSequence> batch, Rows& rows) {
  const ModelConfig& c = config_;
  const AttentionWeights& w = weights_.layer(l).attn;
  const int64_t n = rows.n, H = c.num_attention_heads;
  const int64_t C = c.kv_lora_rank, R = c.qk_rope_head_dim, nope = c.qk_nope_head_dim;
  const int64_t vd = c.v_head_dim, qk = nope + R, L = C + R;

  // Queries [n, H*(nope+R)].
  std::vector<float> q(n * H * qk);
  if (w.q_proj) {
    Linear(rows.h.data(), n, *w.q_proj, q.data(), true);
  } else {
    const int64_t qr = w.q_a_proj.rows;
    std::vector<float> qa(n * qr);
    Linear(rows.h.data(), n, w.q_a_proj, qa.data(), true);
    for (int64_t r = 0; r < n; ++r) {
      kernels::RmsNorm(&qa[r * qr], w.q_a_norm.data(), qr, kLatentNormEps, act_, &qa[r * qr]);
    }
    Linear(qa.data(), n, w.q_b_proj, q.data(), true);
  }
  // Latent rows [n, C+R] -> cache.
  std::vector<float> ckv(n * L);
  Linear(rows.h.data(), n, w.kv_a_proj, ckv.data(), true);
  for (int64_t r = 0; r < n; ++r) {
    float* row = &ckv[r * L];
    kernels::RmsNorm(row, w.kv_a_norm.data(), C, kLatentNormEps, act_, row);
    kernels::ApplyRope(rope_, rows.pos[r], row + C, R, act_);
    const SequenceCache& sc = *batch[rows.seq[r]].cache;
    const int64_t p = rows.pos[r];
    FromF32(row, L, act_,
            cache_.Row(sc.blocks[p / kLatentBlockTokens], l, p % kLatentBlockTokens));
  }
  // Absorbed queries qcat [n, H, C+R]: q_lat_h = W_UK_h^T q_nope_h, then the
  // rotated q_pe_h.
  std::vector<float> qcat(n * H * L);
  kernels::CpuContext serial = ctx_;
  serial.pool = nullptr;
  for (int64_t h = 0; h < H; ++h) {
    const WeightMatrix& uk = w.w_uk_t[h];
    kernels::Gemm(ctx_, &q[h * qk], H * qk, uk.data, uk.dtype, uk.row_stride, &qcat[h * L], H * L,
                  n, C, nope, ExactX());
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < H; ++h) {
      float* qpe = &qcat[(r * H + h) * L + C];
      std::memcpy(qpe, &q[(r * H + h) * qk + nope], R * sizeof(float));
      kernels::ApplyRope(rope_, rows.pos[r], qpe, R, act_);
    }
  }
  // Attention over the cache, one task per query row: online softmax over
  // key blocks from position 0, sums in ascending position.
  std::vector<float> u(n * H * C);
  // A task is one row's group of `G` heads: all heads of a row when there
  // are enough rows to feed the threads (prefill: the slab is read once for
  // every head), fewer heads per task otherwise (decode), so every thread
  // works. A head's scores are bitwise the same in any group (row
  // invariance), so the split never changes a result.
  const int64_t threads = ctx_.pool != nullptr ? ctx_.pool->num_threads() : 1;
  const int64_t groups_per_row = std::min<int64_t>(H, (4 * threads + n - 1) / n);
  const int64_t G = (H + groups_per_row - 1) / groups_per_row;
  auto attend = [&](size_t begin, size_t end) {
    std::vector<float> s(G * kLatentBlockTokens), m(G), lsum(G);
    for (size_t task = begin; task < end; ++task) {
      const int64_t r = static_cast<int64_t>(task) / groups_per_row;
      const int64_t h0 = (static_cast<int64_t>(task) % groups_per_row) * G;
      const int64_t nh = std::min(G, H - h0);
      if (nh <= 0) continue;
      const SequenceCache& sc = *batch[rows.seq[r]].cache;
      const int64_t p = rows.pos[r];
      float* acc = &u[(r * H + h0) * C];
      std::fill(acc, acc + nh * C, 0.0f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(lsum.begin(), lsum.end(), 0.0f);
      for (int64_t b = 0; b * kLatentBlockTokens <= p; ++b) {
        const int64_t valid = std::min<int64_t>(kLatentBlockTokens, p + 1 - b * kLatentBlockTokens);
        const std::byte* slab = cache_.Slab(sc.blocks[b], l);
        kernels::Gemm(serial, &qcat[(r * H + h0) * L], L, slab, act_, L, s.data(),
                      kLatentBlockTokens, nh, valid, L);
        for (int64_t h = 0; h < nh; ++h) {
          float* sh = &s[h * kLatentBlockTokens];
          float mb = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < valid; ++t) {
            sh[t] *= softmax_scale_;
            mb = std::max(mb, sh[t]);
          }
          const float m_new = std::max(m[h], mb);
          const float alpha = std::exp(m[h] - m_new);
          if (alpha != 1.0f) {
            for (int64_t j = 0; j < C; ++j) acc[h * C + j] *= alpha;
            lsum[h] *= alpha;
          }
          m[h] = m_new;
          for (int64_t t = 0; t < valid; ++t) {
            sh[t] = std::exp(sh[t] - m_new);
            lsum[h] += sh[t];
          }
        }
        kernels::WeightedRowSum(s.data(), kLatentBlockTokens, slab, act_, L, acc, C, nh, valid, C);
      }
      for (int64_t h = 0; h < nh; ++h) {
        const float inv = 1.0f / lsum[h];
        for (int64_t j = 0; j < C; ++j) acc[h * C + j] *= inv;
      }
    }
  };
  const size_t tasks = static_cast<size_t>(n * groups_per_row);
  if (ctx_.pool != nullptr) {
    ctx_.pool->ParallelFor(tasks, 1, attend);
  } else {
    attend(0, tasks);
  }
  // o_h = W_UV_h u_h -> [n, H*v] (rounded: the o_proj input), then o_proj.
  std::vector<float> o(n * H * vd);
  for (int64_t h = 0; h < H; ++h) {
    const WeightMatrix& uv = w.w_uv[h];
    kernels::Gemm(ctx_, &u[h * C], H * C, uv.data, uv.dtype, uv.row_stride, &o[h * vd], H * vd, n,
                  vd, C);
  }
  RoundInPlace(o.data(), o.size(), act_);
  Linear(o.data(), n, w.o_proj, rows.tmp.data(), true);
}

void ReferenceMla(const ModelConfig& c, const AttentionWeights& w, const kernels::RopeTable& rope,
                  DType act, const float* h, int64_t T, float* out) {
  const int64_t H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t R = c.qk_rope_head_dim, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  const int64_t qk = nope + R;
  // References over quantized weights use QGemmReference.
  auto gemm_ref = [](const float* x, int64_t n, const WeightMatrix& m, float* y) {
    if (m.quant) {
      kernels::QGemmReference(x, m.cols, *m.quant, y, m.rows, n, m.rows, m.cols);
    } else {
      kernels::GemmReference(x, m.cols, m.data, m.dtype, m.row_stride, y, m.rows, n, m.rows,
                             m.cols);
    }
  };
  auto linear = [&](const float* x, int64_t n, const WeightMatrix& m, float* y) {
    gemm_ref(x, n, m, y);
    RoundInPlace(y, n * m.rows, act);
  };
  std::vector<float> q(T * H * qk);
  if (w.q_proj) {
    linear(h, T, *w.q_proj, q.data());
  } else {
    const int64_t qr = w.q_a_proj.rows;
    std::vector<float> qa(T * qr);
    linear(h, T, w.q_a_proj, qa.data());
    for (int64_t t = 0; t < T; ++t) {
      kernels::RmsNorm(&qa[t * qr], w.q_a_norm.data(), qr, kLatentNormEps, act, &qa[t * qr]);
    }
    linear(qa.data(), T, w.q_b_proj, q.data());
  }
  std::vector<float> ckv(T * (C + R));
  linear(h, T, w.kv_a_proj, ckv.data());
  std::vector<float> latent(T * C), kpe(T * R);
  for (int64_t t = 0; t < T; ++t) {
    kernels::RmsNorm(&ckv[t * (C + R)], w.kv_a_norm.data(), C, kLatentNormEps, act, &latent[t * C]);
    std::memcpy(&kpe[t * R], &ckv[t * (C + R) + C], R * sizeof(float));
    kernels::ApplyRope(rope, t, &kpe[t * R], R, act);
    for (int64_t hh = 0; hh < H; ++hh) kernels::ApplyRope(rope, t, &q[(t * H + hh) * qk + nope], R, act);
  }
  // Expanded keys and values: kv [T, H*(nope+v)].
  std::vector<float> kv(T * H * (nope + vd));
  linear(latent.data(), T, w.kv_b_proj, kv.data());
  const float scale = static_cast<float>(c.softmax_scale());
  std::vector<float> o(T * H * vd, 0.0f), p(T);
  for (int64_t hh = 0; hh < H; ++hh) {
    for (int64_t i = 0; i < T; ++i) {
      const float* qi = &q[(i * H + hh) * qk];
      for (int64_t t = 0; t <= i; ++t) {
        const float* kt = &kv[(t * H + hh) * (nope + vd)];
        double dot = 0;
        for (int64_t j = 0; j < nope; ++j) dot += double(qi[j]) * kt[j];
        for (int64_t j = 0; j < R; ++j) dot += double(qi[nope + j]) * kpe[t * R + j];
        p[t] = static_cast<float>(dot) * scale;
      }
      kernels::Softmax(p.data(), i + 1);
      for (int64_t t = 0; t <= i; ++t) {
        const float* vt = &kv[(t * H + hh) * (nope + vd) + nope];
        for (int64_t j = 0; j < vd; ++j) o[(i * H + hh) * vd + j] += p[t] * vt[j];
      }
    }
  }
  RoundInPlace(o.data(), o.size(), act);
  gemm_ref(o.data(), T, w.o_proj, out);
}

}  // namespace dsv2
