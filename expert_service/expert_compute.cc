#include "expert_service/expert_compute.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/ffn.h"

namespace dsv2 {

ExpertCompute::ExpertCompute(const ModelConfig& config, std::unique_ptr<ExpertWeightSet> weights,
                         kernels::CpuContext ctx)
    : config_(config), weights_(std::move(weights)), ctx_(ctx) {}

absl::StatusOr<router::ExpertReply> ExpertCompute::Handle(
    const router::ExpertDispatch& d) const {
  const int64_t D = config_.hidden_size;
  if (d.hidden != D) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch hidden size ", d.hidden, " != model hidden size ", D));
  }
  if (d.dtype != DType::kF32 && d.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch dtype ", DTypeName(d.dtype), " is not an activation dtype"));
  }
  if (d.num_rows < 0 ||
      d.activations.size() != static_cast<size_t>(d.num_rows) * D * DTypeSize(d.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch has ", d.activations.size(),
                                                   " activation bytes for ", d.num_rows,
                                                   " rows of ", D, " ", DTypeName(d.dtype)));
  }
  if (d.layer < 0 || d.layer >= config_.num_hidden_layers || !config_.is_moe_layer(d.layer)) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch layer ", d.layer,
                                                   " is not a MoE layer"));
  }
  // Group assignments by expert (ascending id; stable within an expert).
  std::vector<int32_t> order(d.assignments.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const router::Assignment& a = d.assignments[i];
    if (a.row < 0 || a.row >= d.num_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("assignment ", i, ": row ", a.row, " out of range [0, ", d.num_rows, ")"));
    }
    if (weights_->Find(d.layer, a.expert) == nullptr) {
      return absl::NotFoundError(absl::StrCat("assignment ", i, ": expert ", a.expert,
                                              " of layer ", d.layer, " is not on this shard"));
    }
    order[i] = static_cast<int32_t>(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return d.assignments[a].expert < d.assignments[b].expert;
  });

  router::ExpertReply reply;
  reply.dtype = d.dtype;
  reply.hidden = d.hidden;
  reply.outputs.resize(d.assignments.size() * D * DTypeSize(d.dtype));
  // One group per expert: order[begin, end).
  struct Group {
    const ExpertWeights* weights;
    size_t begin, end;
  };
  std::vector<Group> groups;
  for (size_t begin = 0; begin < order.size();) {
    const int32_t expert = d.assignments[order[begin]].expert;
    size_t end = begin;
    while (end < order.size() && d.assignments[order[end]].expert == expert) ++end;
    groups.push_back(Group{weights_->Find(d.layer, expert), begin, end});
    begin = end;
  }
  // Each group's rows are gathered, run through the expert and scattered
  // to their own reply rows, so groups are independent.
  const auto run_group = [&](const Group& g, const kernels::CpuContext& ctx, std::vector<float>& x,
                             std::vector<float>& out) {
    const size_t n = g.end - g.begin;
    const ExpertWeights& w = *g.weights;
    x.resize(n * D);
    for (size_t i = 0; i < n; ++i) {
      const size_t row = d.assignments[order[g.begin + i]].row;
      ToF32(d.activations.data() + row * D * DTypeSize(d.dtype), d.dtype, D, &x[i * D]);
    }
    out.resize(n * D);
    SwiGluFfn(ctx, w.gate, w.up, w.down, w.gate_up ? &*w.gate_up : nullptr, x.data(),
              static_cast<int64_t>(n), d.dtype, out.data());
    for (size_t i = 0; i < n; ++i) {
      FromF32(
          &out[i * D], D, d.dtype,
          reply.outputs.data() + static_cast<size_t>(order[g.begin + i]) * D * DTypeSize(d.dtype));
    }
  };
  // Enough experts to feed every thread (a prefill's dispatch, a batch's):
  // whole experts per thread, each run single-threaded, so the threads
  // stream different experts' weights without a pool round trip per GEMM.
  // Otherwise (decode) each GEMM is split over the pool. Either way the
  // bits are the same: the kernels' results do not depend on the split.
  const int threads = ctx_.pool != nullptr ? ctx_.pool->num_threads() : 1;
  if (threads > 1 && groups.size() >= 2 * static_cast<size_t>(threads)) {
    kernels::CpuContext serial = ctx_;
    serial.pool = nullptr;
    ctx_.pool->ParallelFor(groups.size(), 1, [&](size_t b, size_t e) {
      std::vector<float> x, out;
      for (size_t g = b; g < e; ++g) run_group(groups[g], serial, x, out);
    });
  } else {
    std::vector<float> x, out;
    for (const Group& g : groups) run_group(g, ctx_, x, out);
  }
  return reply;
}

}  // namespace dsv2
