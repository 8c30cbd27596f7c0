// Typed views of a checkpoint's tensors, grouped as the forward pass uses
// them (MODEL_SPEC.md section 2).
//
// Linear weights stay where the checkpoint keeps them (memory-mapped, f32 or
// bf16, zero-copy); f16 tensors are converted to f32 at load, and small
// vectors (norm weights) and the router weight are copied to f32. Selective
// loading: NonExpertWeights never touches routed-expert tensors, and
// ExpertWeightSet::Load touches only the (layer, expert) pairs asked for, so an expert
// shard keeps only its experts resident.
//
// Every tensor is checked against the shape the config implies; errors name
// the file and tensor. Both expert layouts are recognised: per-expert
// (`mlp.experts.{e}.{gate,up,down}_proj.weight`) and fused
// (`mlp.experts.gate_up_proj` [E, 2I, D], `mlp.experts.down_proj` [E, D, I]).
//
// Thread-safety: immutable after load. Views stay valid while the
// Checkpoint and the owning weights object live.
#ifndef DSV2_MODEL_WEIGHTS_H_
#define DSV2_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dsv2 {

// A [rows, cols] row-major matrix in f32 or bf16 with a row stride in
// elements; Linear weights are [out, in]. With `quant` set (load-time
// quantization, issue 13) the matrix is held in that group-quantized form
// instead: `data`, `dtype` and `row_stride` are then unused (data is null)
// and `quant` points into the owning weights object's buffers.
struct WeightMatrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  std::optional<kernels::QuantizedWeights> quant;

  // The sub-matrix of rows [begin, begin + count) (quantized or not).
  WeightMatrix RowSlice(int64_t begin, int64_t count) const;
  // Row r converted to f32 (cols values); a quantized row is dequantized
  // (exactly: scale * q in f32).
  void RowToF32(int64_t r, float* out) const;
  // Bytes of weight data the matrix references (values and scales).
  size_t bytes() const;
};

// Y[m, :] = W X[m, :] for m < M through Gemm (f32/bf16 weights) or QGemm
// (quantized weights); y is [M, w.rows] at row stride ldy, x is [M, w.cols]
// at row stride ldx. `x_values` is Gemm's hint (QGemm needs none). Row
// invariance holds in both cases (kernels/cpu.h).
void Linear(const kernels::CpuContext& ctx, const float* x, size_t ldx, const WeightMatrix& w,
            float* y, size_t ldy, size_t M, kernels::XValues x_values = kernels::XValues::kF32);

// Quantized linear weights (issue 13). WeightQuantization (config.h) says
// which weights are quantized and to what; they are quantized while loading
// (QuantizeRows over their f32 values) or, for a checkpoint whose
// config.json has a quantization_config, read as stored:
//   <name>        I8 [N, K] (int8) or U8 [N, 16 * ceil(K / 32)] (int4),
//                 the bytes of quant.h's layout at the minimum row stride;
//   <name>_scale  F16 [N, ceil(K / 32)], the group scales.
// Loading checks every such pair against the shapes the config implies and
// the format the quantization_config gives that weight; a float tensor
// where a quantized one is expected (or the reverse) is an error naming the
// file and tensor. kv_b_proj always stays as stored: the absorbed MLA path
// uses its transposed per-head copy and views.

// The quantizable linear weights, by what quantization treats alike.
enum class LinearRole : uint8_t { kAttention, kDenseFfn, kSharedExpert, kRoutedExpert, kLmHead };
// The format `role`'s weights take under `q`; nullopt = as stored.
std::optional<kernels::QuantFormat> PlannedFormat(const WeightQuantization& q, LinearRole role);
// The role of a tensor of a DeepSeek-V2 checkpoint by its name: the
// attention projections but kv_b_proj, dense FFN, shared experts, routed
// experts (per-expert names and the fused gate_up_proj / down_proj) and
// lm_head; nullopt for everything else (norms, router, embeddings,
// kv_b_proj).
std::optional<LinearRole> LinearRoleOf(std::string_view tensor_name);
// The tensor name of a quantized weight's scales: <name>_scale.
std::string QuantScaleName(std::string_view weight_name);
// The two tensors a [N, K] weight quantized to `format` is stored as: the
// values (I8 [N, K] or U8 [N, 16 ceil(K / 32)]) and the scales (F16
// [N, ceil(K / 32)]); QuantizeRows with ldq = QuantRowBytes(format, K) and
// lds = QuantGroupsPerRow(K) writes their bytes.
TensorSpec QuantValuesSpec(std::string_view weight_name, kernels::QuantFormat format, int64_t N,
                           int64_t K);
TensorSpec QuantScalesSpec(std::string_view weight_name, int64_t N, int64_t K);

// "none", "int8", "int4" -> Format; InvalidArgument otherwise.
absl::StatusOr<WeightQuantization::Format> ParseWeightFormat(std::string_view name);
const char* WeightFormatName(WeightQuantization::Format format);

struct MlpWeights {
  WeightMatrix gate, up, down;  // [I, D], [I, D], [D, I]
};

struct AttentionWeights {
  std::optional<WeightMatrix> q_proj;  // [H*(nope+R), D] when q_lora_rank is null
  WeightMatrix q_a_proj;               // [q_lora_rank, D]
  std::vector<float> q_a_norm;         // [q_lora_rank]
  WeightMatrix q_b_proj;               // [H*(nope+R), q_lora_rank]
  WeightMatrix kv_a_proj;              // [C+R, D]
  std::vector<float> kv_a_norm;        // [C]
  WeightMatrix kv_b_proj;              // [H*(nope+v), C]
  WeightMatrix o_proj;                 // [D, H*v]
  // Absorbed form (MODEL_SPEC section 5): per head h, W_UK_h^T as [C, nope]
  // (an owned transposed copy of kv_b_proj's key rows, same dtype).
  std::vector<WeightMatrix> w_uk_t;
  // Per head h, W_UV_h [v, C]: a view into kv_b_proj.
  std::vector<WeightMatrix> w_uv;
};

struct LayerWeights {
  std::vector<float> input_norm;  // [D]
  std::vector<float> post_norm;   // [D]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;               // l < first_k_dense_replace
  WeightMatrix router;            // [E, D], f32 (owned copy)
  MlpWeights shared;              // intermediate I * n_shared_experts
};

// Holds converted copies (f16 -> f32, transposes, f32 norms).
class OwnedBuffers {
 public:
  // A buffer of `bytes` bytes, zeroed, 64-byte aligned, valid for the
  // lifetime of this object.
  void* Allocate(size_t bytes);

 private:
  std::vector<std::unique_ptr<std::byte[]>> buffers_;
};

// Everything but the routed experts: what an attention node loads.
class NonExpertWeights {
 public:
  // `activation_dtype`: nullopt = the checkpoint's (the default everywhere);
  // kF32 runs a bf16 checkpoint with f32 activations (a numerics check; the
  // weights are unchanged).
  static absl::StatusOr<std::unique_ptr<NonExpertWeights>> Load(
      const ModelConfig& config, const Checkpoint& checkpoint,
      std::optional<DType> activation_dtype = std::nullopt,
      const WeightQuantization& quantization = {});
  const ModelConfig& config() const { return config_; }
  // The activation dtype: the embedding's dtype (bf16 -> bf16; f32 and f16
  // -> f32). DESIGN.md section 7.
  DType activation_dtype() const { return activation_dtype_; }
  const WeightMatrix& embed() const { return embed_; }      // [V, D]
  const std::vector<float>& final_norm() const { return final_norm_; }
  const WeightMatrix& lm_head() const { return lm_head_; }  // [V, D]
  const LayerWeights& layer(int64_t l) const { return layers_[l]; }

 private:
  NonExpertWeights() = default;
  ModelConfig config_;
  DType activation_dtype_ = DType::kF32;
  WeightMatrix embed_;
  std::vector<float> final_norm_;
  WeightMatrix lm_head_;
  std::vector<LayerWeights> layers_;
  OwnedBuffers owned_;
};

// Routed experts for a chosen set of (layer, expert) pairs: what an expert
// shard loads. For the fused layout, gate and up are adjacent rows of one
// [2I, D] matrix (`gate_up` is set) so one GEMM computes both.
struct ExpertWeights {
  WeightMatrix gate;                    // [I, D]
  WeightMatrix up;                      // [I, D]
  WeightMatrix down;                    // [D, I]
  std::optional<WeightMatrix> gate_up;  // [2I, D] when contiguous
};

class ExpertWeightSet {
 public:
  struct Key {
    int32_t layer;
    int32_t expert;
    bool operator==(const Key&) const = default;
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.layer, k.expert);
    }
  };
  // Loads the given (layer, expert) pairs (AllLayers builds every MoE layer
  // x some experts). InvalidArgument for an expert id out of range or a dense
  // layer.
  static absl::StatusOr<std::unique_ptr<ExpertWeightSet>> Load(
      const ModelConfig& config, const Checkpoint& checkpoint, const std::vector<Key>& keys,
      const WeightQuantization& quantization = {});
  // Every MoE layer x every expert in `experts`.
  static std::vector<Key> AllLayers(const ModelConfig& config, const std::vector<int32_t>& experts);

  const ExpertWeights* Find(int32_t layer, int32_t expert) const;
  size_t size() const { return experts_.size(); }
  // Bytes of weight data these experts reference.
  size_t weight_bytes() const { return weight_bytes_; }
  // Reads every page of every expert once, so it is resident before serving.
  void Prefault() const;

 private:
  ExpertWeightSet() = default;
  absl::flat_hash_map<Key, ExpertWeights> experts_;
  size_t weight_bytes_ = 0;
  OwnedBuffers owned_;
};

}  // namespace dsv2

#endif  // DSV2_MODEL_WEIGHTS_H_
