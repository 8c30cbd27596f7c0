#include "model/weights.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace dsv2 {
namespace {

std::string LayerPrefix(int64_t l) { return absl::StrCat("model.layers.", l, "."); }

// A zero-copy view when the checkpoint's dtype is usable as is and aligned;
// otherwise an owned f32 copy (f16, or a misaligned range).
// Rows [row_begin, row_begin + rows) of `t` seen as a [*, cols] matrix.
// Only those rows are touched or converted (selective loading of one
// expert out of a fused [E, ...] tensor).
WeightMatrix AsMatrix(const TensorView& t, int64_t row_begin, int64_t rows, int64_t cols,
                      OwnedBuffers& owned) {
  WeightMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.row_stride = cols;
  const size_t esize = DTypeSize(t.dtype);
  const std::byte* src = t.data + static_cast<size_t>(row_begin * cols) * esize;
  const bool aligned = reinterpret_cast<uintptr_t>(src) % esize == 0;
  if (t.dtype != DType::kF16 && aligned) {
    m.data = src;
    m.dtype = t.dtype;
    return m;
  }
  const size_t n = static_cast<size_t>(rows * cols);
  if (t.dtype == DType::kF16 || t.dtype == DType::kF32) {
    auto* dst = static_cast<float*>(owned.Allocate(n * sizeof(float)));
    if (t.dtype == DType::kF32) {
      std::memcpy(dst, src, n * sizeof(float));
    } else {
      std::vector<uint16_t> tmp(n);
      std::memcpy(tmp.data(), src, n * 2);
      ToF32(tmp.data(), DType::kF16, n, dst);
    }
    m.data = dst;
    m.dtype = DType::kF32;
  } else {  // misaligned bf16
    void* dst = owned.Allocate(n * 2);
    std::memcpy(dst, src, n * 2);
    m.data = dst;
    m.dtype = DType::kBF16;
  }
  return m;
}

// All of `t` converted to f32 into dst (t.num_elements() floats); the
// mapped data may be unaligned, so it is copied out first.
void CopyToF32(const TensorView& t, float* dst) {
  std::vector<uint8_t> tmp(t.num_bytes);
  std::memcpy(tmp.data(), t.data, t.num_bytes);
  ToF32(tmp.data(), t.dtype, static_cast<size_t>(t.num_elements()), dst);
}

std::vector<float> AsF32Vector(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.num_elements()));
  CopyToF32(t, out.data());
  return out;
}

// `src` quantized into owned buffers, streamed in blocks of rows (only one
// block of f32 rows exists at a time); after_block(first_row, rows) runs
// after each block. `name` is for errors.
template <typename AfterBlock>
absl::StatusOr<WeightMatrix> Quantize(const WeightMatrix& src, kernels::QuantFormat format,
                                      const std::string& name, OwnedBuffers& owned,
                                      AfterBlock after_block) {
  const size_t N = static_cast<size_t>(src.rows), K = static_cast<size_t>(src.cols);
  kernels::QuantizedWeights q;
  q.format = format;
  q.ldq = kernels::QuantRowBytes(format, K);
  q.lds = kernels::QuantGroupsPerRow(K);
  auto* qdata = static_cast<uint8_t*>(owned.Allocate(std::max<size_t>(N * q.ldq, 1)));
  auto* scales = static_cast<uint16_t*>(owned.Allocate(std::max<size_t>(N * q.lds, 1) * 2));
  q.q = qdata;
  q.scales = scales;
  constexpr size_t kBlockRows = 64;
  std::vector<float> rows(std::min(N, kBlockRows) * K);
  for (size_t r0 = 0; r0 < N; r0 += kBlockRows) {
    const size_t n = std::min(kBlockRows, N - r0);
    for (size_t i = 0; i < n; ++i) src.RowToF32(static_cast<int64_t>(r0 + i), &rows[i * K]);
    const absl::Status s = kernels::QuantizeRows(format, rows.data(), K, n, K, qdata + r0 * q.ldq,
                                                 q.ldq, scales + r0 * q.lds, q.lds);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": quantizing rows from ", r0, ": ", s.message()));
    }
    after_block(r0, n);
  }
  WeightMatrix m;
  m.rows = src.rows;
  m.cols = src.cols;
  m.quant = q;
  return m;
}

class Loader {
 public:
  // `stored`: the checkpoint stores the weights PlannedFormat names in
  // quantized form (its config.json has a quantization_config); otherwise
  // they are quantized here.
  Loader(const Checkpoint& ckpt, OwnedBuffers& owned, bool stored = false)
      : ckpt_(ckpt), owned_(owned), stored_(stored) {}

  // Get + a float dtype: norms, the router, embeddings and unquantized
  // weights are never I8 / U8.
  absl::StatusOr<const TensorView*> Float(const std::string& name,
                                          const std::vector<int64_t>& shape) const {
    DSV2_ASSIGN_OR_RETURN(const TensorView* t, ckpt_.Get(name, shape));
    if (!IsFloatDType(t->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          t->file, ": tensor '", name, "' has dtype ", DTypeName(t->dtype),
          stored_ ? "; expected a float type (config.json's quantization_config does not "
                    "quantize this tensor)"
                  : "; expected a float type (a quantized tensor, but config.json has no "
                    "quantization_config)"));
    }
    return t;
  }

  // The weight `name` [rows, cols] in `format` (nullopt = as stored):
  // read as stored quantized, quantized here, or as stored.
  absl::StatusOr<WeightMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols,
                                      std::optional<kernels::QuantFormat> format = std::nullopt) {
    if (stored_ && format) return StoredQuantized(name, rows, cols, *format);
    DSV2_ASSIGN_OR_RETURN(const TensorView* t, Float(name, {rows, cols}));
    if (!format) return AsMatrix(*t, 0, rows, cols, owned_);
    return QuantizedView(*t, 0, rows, cols, *format, name);
  }
  // A weight the checkpoint stores quantized (weights.h): `name` I8 [N, K]
  // or U8 [N, 16 G] and `name`_scale F16 [N, G], zero-copy (the scales are
  // copied when misaligned).
  absl::StatusOr<WeightMatrix> StoredQuantized(const std::string& name, int64_t rows, int64_t cols,
                                               kernels::QuantFormat format) {
    const auto K = static_cast<size_t>(cols);
    kernels::QuantizedWeights q;
    q.format = format;
    q.ldq = kernels::QuantRowBytes(format, K);
    q.lds = kernels::QuantGroupsPerRow(K);
    const TensorSpec values = QuantValuesSpec(name, format, rows, cols);
    DSV2_ASSIGN_OR_RETURN(const TensorView* t, ckpt_.Get(name, values.shape));
    if (t->dtype != values.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat(t->file, ": tensor '", name, "' has dtype ", DTypeName(t->dtype),
                       "; config.json's ", "quantization_config stores it as ",
                       kernels::QuantFormatName(format), " (", DTypeName(values.dtype), ")"));
    }
    const TensorSpec scales = QuantScalesSpec(name, rows, cols);
    DSV2_ASSIGN_OR_RETURN(const TensorView* s, ckpt_.Get(scales.name, scales.shape));
    if (s->dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(s->file, ": tensor '", scales.name,
                                                     "' has dtype ", DTypeName(s->dtype),
                                                     "; group scales are F16"));
    }
    q.q = t->data;
    if (reinterpret_cast<uintptr_t>(s->data) % alignof(uint16_t) == 0) {
      q.scales = reinterpret_cast<const uint16_t*>(s->data);
    } else {
      void* copy = owned_.Allocate(std::max<size_t>(s->num_bytes, 1));
      std::memcpy(copy, s->data, s->num_bytes);
      q.scales = static_cast<const uint16_t*>(copy);
    }
    WeightMatrix m;
    m.rows = rows;
    m.cols = cols;
    m.quant = q;
    return m;
  }
  // Rows [row_begin, row_begin + rows) of `t` quantized (a zero-copy view
  // of the mapped rows is read block by block).
  absl::StatusOr<WeightMatrix> QuantizedView(const TensorView& t, int64_t row_begin, int64_t rows,
                                             int64_t cols, kernels::QuantFormat format,
                                             const std::string& name) {
    OwnedBuffers scratch;  // an f16 / misaligned copy, freed after quantizing
    const WeightMatrix src = AsMatrix(t, row_begin, rows, cols, scratch);
    const size_t row_bytes = static_cast<size_t>(cols) * DTypeSize(t.dtype);
    const std::byte* first = t.data + static_cast<size_t>(row_begin) * row_bytes;
    return Quantize(src, format, name, owned_, [&](size_t r0, size_t n) {
      ReleaseMappedPages(first + r0 * row_bytes, n * row_bytes);
    });
  }
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    DSV2_ASSIGN_OR_RETURN(const TensorView* t, Float(name, {n}));
    return AsF32Vector(*t);
  }
  absl::StatusOr<MlpWeights> Mlp(const std::string& prefix, int64_t d, int64_t inter,
                                 std::optional<kernels::QuantFormat> format = std::nullopt) {
    MlpWeights w;
    DSV2_ASSIGN_OR_RETURN(w.gate, Matrix(prefix + "gate_proj.weight", inter, d, format));
    DSV2_ASSIGN_OR_RETURN(w.up, Matrix(prefix + "up_proj.weight", inter, d, format));
    DSV2_ASSIGN_OR_RETURN(w.down, Matrix(prefix + "down_proj.weight", d, inter, format));
    return w;
  }
  // An owned f32 copy (the router runs in fp32, MODEL_SPEC section 7).
  absl::StatusOr<WeightMatrix> F32Matrix(const std::string& name, int64_t rows, int64_t cols) {
    DSV2_ASSIGN_OR_RETURN(const TensorView* t, Float(name, {rows, cols}));
    const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
    auto* dst = static_cast<float*>(owned_.Allocate(bytes));
    CopyToF32(*t, dst);
    return WeightMatrix{dst, DType::kF32, rows, cols, cols, std::nullopt};
  }

  const Checkpoint& ckpt() const { return ckpt_; }
  OwnedBuffers& owned() { return owned_; }
  bool stored() const { return stored_; }

 private:
  const Checkpoint& ckpt_;
  OwnedBuffers& owned_;
  bool stored_;
};

// The quantization in effect for a checkpoint and a load-time request: the
// checkpoint's stored one (the request must be none or the same), else the
// request.
absl::StatusOr<WeightQuantization> EffectiveQuantization(const ModelConfig& c,
                                                         const WeightQuantization& requested) {
  if (!c.stored_quantization) return requested;
  WeightQuantization stored = *c.stored_quantization;
  stored.int8_activations = requested.int8_activations;  // a run-time choice
  bool same_plan = true;  // flags that quantize the same weights the same way
  for (LinearRole role : {LinearRole::kAttention, LinearRole::kDenseFfn, LinearRole::kSharedExpert,
                          LinearRole::kRoutedExpert, LinearRole::kLmHead}) {
    same_plan = same_plan && PlannedFormat(requested, role) == PlannedFormat(stored, role);
  }
  if (requested.format != WeightQuantization::Format::kNone && !same_plan) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the checkpoint is stored quantized (config.json quantization_config: ",
        WeightFormatName(stored.format), stored.experts_only ? ", experts only" : "",
        stored.lm_head_bf16 || stored.experts_only ? ", lm_head unquantized" : ", lm_head int8",
        "); load it without --weights (or with the same flags), or quantize the float "
        "checkpoint instead"));
  }
  return stored;
}

// `format`: the projections' quantized format (nullopt = as stored);
// kv_b_proj always stays as stored (see WeightQuantization).
absl::StatusOr<AttentionWeights> LoadAttention(const ModelConfig& c, int64_t l, Loader& ld,
                                               std::optional<kernels::QuantFormat> format) {
  const std::string p = LayerPrefix(l) + "self_attn.";
  const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t R = c.qk_rope_head_dim, nope = c.qk_nope_head_dim, v = c.v_head_dim;
  AttentionWeights a;
  if (c.q_lora_rank) {
    const int64_t q = *c.q_lora_rank;
    DSV2_ASSIGN_OR_RETURN(a.q_a_proj, ld.Matrix(p + "q_a_proj.weight", q, D, format));
    DSV2_ASSIGN_OR_RETURN(a.q_a_norm, ld.Vector(p + "q_a_layernorm.weight", q));
    DSV2_ASSIGN_OR_RETURN(a.q_b_proj, ld.Matrix(p + "q_b_proj.weight", H * (nope + R), q, format));
  } else {
    DSV2_ASSIGN_OR_RETURN(a.q_proj, ld.Matrix(p + "q_proj.weight", H * (nope + R), D, format));
  }
  DSV2_ASSIGN_OR_RETURN(a.kv_a_proj, ld.Matrix(p + "kv_a_proj_with_mqa.weight", C + R, D, format));
  DSV2_ASSIGN_OR_RETURN(a.kv_a_norm, ld.Vector(p + "kv_a_layernorm.weight", C));
  DSV2_ASSIGN_OR_RETURN(a.kv_b_proj, ld.Matrix(p + "kv_b_proj.weight", H * (nope + v), C));
  DSV2_ASSIGN_OR_RETURN(a.o_proj, ld.Matrix(p + "o_proj.weight", D, H * v, format));
  // Absorbed-form views (MODEL_SPEC section 5): kv_b_proj rows for head h
  // are [W_UK_h (nope rows); W_UV_h (v rows)].
  const size_t esize = DTypeSize(a.kv_b_proj.dtype);
  for (int64_t h = 0; h < H; ++h) {
    const WeightMatrix uk = a.kv_b_proj.RowSlice(h * (nope + v), nope);
    a.w_uv.push_back(a.kv_b_proj.RowSlice(h * (nope + v) + nope, v));
    auto* dst = static_cast<std::byte*>(ld.owned().Allocate(static_cast<size_t>(C * nope) * esize));
    const auto* src = static_cast<const std::byte*>(uk.data);
    for (int64_t j = 0; j < nope; ++j) {
      for (int64_t k = 0; k < C; ++k) {
        std::memcpy(dst + (k * nope + j) * esize, src + (j * uk.row_stride + k) * esize, esize);
      }
    }
    a.w_uk_t.push_back(WeightMatrix{dst, a.kv_b_proj.dtype, C, nope, nope, std::nullopt});
  }
  return a;
}

}  // namespace

WeightMatrix WeightMatrix::RowSlice(int64_t begin, int64_t count) const {
  WeightMatrix m = *this;
  m.rows = count;
  if (quant) {
    const auto b = static_cast<size_t>(begin);
    m.quant->q = static_cast<const uint8_t*>(quant->q) + b * quant->ldq;
    m.quant->scales = quant->scales + b * quant->lds;
    return m;
  }
  m.data = static_cast<const std::byte*>(data) + begin * row_stride * DTypeSize(dtype);
  return m;
}

void WeightMatrix::RowToF32(int64_t r, float* out) const {
  if (quant) {
    const auto b = static_cast<size_t>(r);
    kernels::DequantizeRow(quant->format, static_cast<const uint8_t*>(quant->q) + b * quant->ldq,
                           quant->scales + b * quant->lds, static_cast<size_t>(cols), out);
    return;
  }
  ToF32(static_cast<const std::byte*>(data) + r * row_stride * DTypeSize(dtype), dtype,
        static_cast<size_t>(cols), out);
}

size_t WeightMatrix::bytes() const {
  const auto n = static_cast<size_t>(rows);
  if (quant) return n * (quant->ldq + quant->lds * sizeof(uint16_t));
  return n * static_cast<size_t>(row_stride) * DTypeSize(dtype);
}

void Linear(const kernels::CpuContext& ctx, const float* x, size_t ldx, const WeightMatrix& w,
            float* y, size_t ldy, size_t M, kernels::XValues x_values) {
  const auto N = static_cast<size_t>(w.rows), K = static_cast<size_t>(w.cols);
  if (w.quant) {
    kernels::QGemm(ctx, x, ldx, *w.quant, y, ldy, M, N, K, ctx.quant_activations);
  } else {
    kernels::Gemm(ctx, x, ldx, w.data, w.dtype, static_cast<size_t>(w.row_stride), y, ldy, M, N, K,
                  x_values);
  }
}

std::optional<kernels::QuantFormat> PlannedFormat(const WeightQuantization& q, LinearRole role) {
  std::optional<kernels::QuantFormat> format;
  switch (q.format) {
    case WeightQuantization::Format::kNone:
      return std::nullopt;
    case WeightQuantization::Format::kInt8:
      format = kernels::QuantFormat::kInt8;
      break;
    case WeightQuantization::Format::kInt4:
      format = kernels::QuantFormat::kInt4;
      break;
  }
  switch (role) {
    case LinearRole::kSharedExpert:
    case LinearRole::kRoutedExpert:
      return format;
    case LinearRole::kAttention:
    case LinearRole::kDenseFfn:
      return q.experts_only ? std::nullopt : format;
    case LinearRole::kLmHead:
      if (q.experts_only || q.lm_head_bf16) return std::nullopt;
      return kernels::QuantFormat::kInt8;
  }
  return std::nullopt;
}

std::optional<LinearRole> LinearRoleOf(std::string_view tensor_name) {
  absl::string_view name(tensor_name.data(), tensor_name.size());
  if (name == "lm_head.weight") return LinearRole::kLmHead;
  constexpr absl::string_view kLayers = "model.layers.";
  if (!absl::ConsumePrefix(&name, kLayers)) return std::nullopt;
  const size_t dot = name.find('.');
  if (dot == 0 || dot == absl::string_view::npos ||
      name.substr(0, dot).find_first_not_of("0123456789") != absl::string_view::npos) {
    return std::nullopt;
  }
  name.remove_prefix(dot + 1);
  if (absl::ConsumePrefix(&name, "self_attn.")) {
    for (absl::string_view p : {"q_proj.weight", "q_a_proj.weight", "q_b_proj.weight",
                                "kv_a_proj_with_mqa.weight", "o_proj.weight"}) {
      if (name == p) return LinearRole::kAttention;
    }
    return std::nullopt;
  }
  if (!absl::ConsumePrefix(&name, "mlp.")) return std::nullopt;
  auto is_proj = [](absl::string_view n) {
    return n == "gate_proj.weight" || n == "up_proj.weight" || n == "down_proj.weight";
  };
  if (is_proj(name)) return LinearRole::kDenseFfn;
  if (absl::ConsumePrefix(&name, "shared_experts.")) {
    return is_proj(name) ? std::optional<LinearRole>(LinearRole::kSharedExpert) : std::nullopt;
  }
  if (!absl::ConsumePrefix(&name, "experts.")) return std::nullopt;
  if (name == "gate_up_proj" || name == "down_proj") return LinearRole::kRoutedExpert;
  const size_t d2 = name.find('.');
  if (d2 == 0 || d2 == absl::string_view::npos ||
      name.substr(0, d2).find_first_not_of("0123456789") != absl::string_view::npos) {
    return std::nullopt;
  }
  return is_proj(name.substr(d2 + 1)) ? std::optional<LinearRole>(LinearRole::kRoutedExpert)
                                      : std::nullopt;
}

std::string QuantScaleName(std::string_view weight_name) {
  return absl::StrCat(absl::string_view(weight_name.data(), weight_name.size()), "_scale");
}

TensorSpec QuantValuesSpec(std::string_view weight_name, kernels::QuantFormat format, int64_t N,
                           int64_t K) {
  const auto row_bytes =
      static_cast<int64_t>(kernels::QuantRowBytes(format, static_cast<size_t>(K)));
  return TensorSpec{std::string(weight_name),
                    format == kernels::QuantFormat::kInt8 ? DType::kI8 : DType::kU8,
                    {N, row_bytes}};
}

TensorSpec QuantScalesSpec(std::string_view weight_name, int64_t N, int64_t K) {
  return TensorSpec{QuantScaleName(weight_name),
                    DType::kF16,
                    {N, static_cast<int64_t>(kernels::QuantGroupsPerRow(static_cast<size_t>(K)))}};
}

absl::StatusOr<WeightQuantization::Format> ParseWeightFormat(std::string_view name) {
  if (name == "none") return WeightQuantization::Format::kNone;
  if (name == "int8") return WeightQuantization::Format::kInt8;
  if (name == "int4") return WeightQuantization::Format::kInt4;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown weight format \"", std::string(name), "\" (none, int8 or int4)"));
}

const char* WeightFormatName(WeightQuantization::Format format) {
  switch (format) {
    case WeightQuantization::Format::kNone:
      return "none";
    case WeightQuantization::Format::kInt8:
      return "int8";
    case WeightQuantization::Format::kInt4:
      return "int4";
  }
  return "?";
}

void* OwnedBuffers::Allocate(size_t bytes) {
  // operator new[] on std::byte aligns to __STDCPP_DEFAULT_NEW_ALIGNMENT__
  // (16); over-allocate to give 64-byte (cache-line) alignment.
  auto buf = std::make_unique<std::byte[]>(bytes + 64);
  void* p = buf.get();
  size_t space = bytes + 64;
  std::align(64, bytes, p, space);
  std::memset(p, 0, bytes);
  buffers_.push_back(std::move(buf));
  return p;
}

absl::StatusOr<std::unique_ptr<NonExpertWeights>> NonExpertWeights::Load(
    const ModelConfig& c, const Checkpoint& ckpt, std::optional<DType> activation_dtype,
    const WeightQuantization& quantization) {
  auto w = std::unique_ptr<NonExpertWeights>(new NonExpertWeights());
  DSV2_ASSIGN_OR_RETURN(const WeightQuantization q, EffectiveQuantization(c, quantization));
  const std::optional<kernels::QuantFormat> attn_format = PlannedFormat(q, LinearRole::kAttention);
  const std::optional<kernels::QuantFormat> dense_format = PlannedFormat(q, LinearRole::kDenseFfn);
  const std::optional<kernels::QuantFormat> shared_format =
      PlannedFormat(q, LinearRole::kSharedExpert);
  const std::optional<kernels::QuantFormat> lm_head_format = PlannedFormat(q, LinearRole::kLmHead);
  w->config_ = c;
  Loader ld(ckpt, w->owned_, c.stored_quantization.has_value());
  const int64_t D = c.hidden_size, V = c.vocab_size;
  DSV2_ASSIGN_OR_RETURN(const TensorView* embed, ld.Float("model.embed_tokens.weight", {V, D}));
  w->activation_dtype_ = embed->dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  if (activation_dtype) {
    if (*activation_dtype == DType::kF16) {
      return absl::InvalidArgumentError("f16 is not an activation dtype");
    }
    w->activation_dtype_ = *activation_dtype;
  }
  w->embed_ = AsMatrix(*embed, 0, V, D, w->owned_);
  DSV2_ASSIGN_OR_RETURN(w->final_norm_, ld.Vector("model.norm.weight", D));
  if (c.tie_word_embeddings && ckpt.Find("lm_head.weight") == nullptr) {
    if (lm_head_format) {  // a quantized copy; the embeddings stay as stored
      DSV2_ASSIGN_OR_RETURN(w->lm_head_, ld.QuantizedView(*embed, 0, V, D, *lm_head_format,
                                                          "model.embed_tokens.weight"));
    } else {
      w->lm_head_ = w->embed_;
    }
  } else {
    DSV2_ASSIGN_OR_RETURN(w->lm_head_, ld.Matrix("lm_head.weight", V, D, lm_head_format));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights lw;
    const std::string p = LayerPrefix(l);
    DSV2_ASSIGN_OR_RETURN(lw.input_norm, ld.Vector(p + "input_layernorm.weight", D));
    DSV2_ASSIGN_OR_RETURN(lw.post_norm, ld.Vector(p + "post_attention_layernorm.weight", D));
    DSV2_ASSIGN_OR_RETURN(lw.attn, LoadAttention(c, l, ld, attn_format));
    lw.is_moe = c.is_moe_layer(l);
    if (!lw.is_moe) {
      DSV2_ASSIGN_OR_RETURN(lw.dense, ld.Mlp(p + "mlp.", D, c.intermediate_size, dense_format));
    } else {
      DSV2_ASSIGN_OR_RETURN(lw.router,
                            ld.F32Matrix(p + "mlp.gate.weight", c.n_routed_experts, D));
      if (c.n_shared_experts > 0) {
        DSV2_ASSIGN_OR_RETURN(lw.shared,
                              ld.Mlp(p + "mlp.shared_experts.", D,
                                     c.moe_intermediate_size * c.n_shared_experts, shared_format));
      }
    }
    w->layers_.push_back(std::move(lw));
  }
  return w;
}

std::vector<ExpertWeightSet::Key> ExpertWeightSet::AllLayers(const ModelConfig& c,
                                                             const std::vector<int32_t>& experts) {
  std::vector<Key> keys;
  for (int64_t l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
    for (int32_t e : experts) keys.push_back({static_cast<int32_t>(l), e});
  }
  return keys;
}

absl::StatusOr<std::unique_ptr<ExpertWeightSet>> ExpertWeightSet::Load(
    const ModelConfig& c, const Checkpoint& ckpt, const std::vector<Key>& keys,
    const WeightQuantization& quantization) {
  auto set = std::unique_ptr<ExpertWeightSet>(new ExpertWeightSet());
  DSV2_ASSIGN_OR_RETURN(const WeightQuantization q, EffectiveQuantization(c, quantization));
  const std::optional<kernels::QuantFormat> format = PlannedFormat(q, LinearRole::kRoutedExpert);
  Loader ld(ckpt, set->owned_, c.stored_quantization.has_value());
  const int64_t D = c.hidden_size, I = c.moe_intermediate_size, E = c.n_routed_experts;
  for (const Key& k : keys) {
    if (k.layer < 0 || k.layer >= c.num_hidden_layers || !c.is_moe_layer(k.layer)) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", k.layer, " is not a MoE layer"));
    }
    if (k.expert < 0 || k.expert >= E) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert ", k.expert, " out of range [0, ", E, ")"));
    }
    if (set->experts_.contains(k)) continue;
    const std::string p = LayerPrefix(k.layer) + "mlp.experts.";
    ExpertWeights ew;
    const TensorView* fused_gate_up = ckpt.Find(p + "gate_up_proj");
    if (fused_gate_up != nullptr) {
      // Fused layout: [E, 2I, D] and [E, D, I]; rows 0..I-1 gate, I..2I-1 up.
      // Always float: `dsv2 quantize` writes quantized experts per expert.
      if (ld.stored() && format) {
        return absl::InvalidArgumentError(absl::StrCat(
            fused_gate_up->file, ": tensor '", p, "gate_up_proj': fused expert tensors are float; ",
            "config.json's quantization_config expects per-expert quantized tensors"));
      }
      DSV2_ASSIGN_OR_RETURN(const TensorView* gu, ld.Float(p + "gate_up_proj", {E, 2 * I, D}));
      DSV2_ASSIGN_OR_RETURN(const TensorView* dn, ld.Float(p + "down_proj", {E, D, I}));
      const int64_t e = k.expert;
      if (format) {
        DSV2_ASSIGN_OR_RETURN(
            ew.gate_up, ld.QuantizedView(*gu, e * 2 * I, 2 * I, D, *format, p + "gate_up_proj"));
        DSV2_ASSIGN_OR_RETURN(ew.down,
                              ld.QuantizedView(*dn, e * D, D, I, *format, p + "down_proj"));
      } else {
        ew.gate_up = AsMatrix(*gu, e * 2 * I, 2 * I, D, set->owned_);
        ew.down = AsMatrix(*dn, e * D, D, I, set->owned_);
      }
      ew.gate = ew.gate_up->RowSlice(0, I);
      ew.up = ew.gate_up->RowSlice(I, I);
    } else {
      DSV2_ASSIGN_OR_RETURN(MlpWeights m, ld.Mlp(absl::StrCat(p, k.expert, "."), D, I, format));
      ew.gate = m.gate;
      ew.up = m.up;
      ew.down = m.down;
    }
    set->weight_bytes_ += ew.gate.bytes() + ew.up.bytes() + ew.down.bytes();
    set->experts_.emplace(k, ew);
  }
  return set;
}

const ExpertWeights* ExpertWeightSet::Find(int32_t layer, int32_t expert) const {
  auto it = experts_.find(Key{layer, expert});
  return it == experts_.end() ? nullptr : &it->second;
}

void ExpertWeightSet::Prefault() const {
  volatile uint8_t sink = 0;
  auto touch_range = [&](const void* data, size_t bytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < bytes; i += 4096) sink = sink + p[i];
  };
  // Quantized at load: owned buffers, already resident; stored quantized:
  // values and scales in the mapping.
  auto touch = [&](const WeightMatrix& m) {
    if (!m.quant) {
      touch_range(m.data, m.bytes());
      return;
    }
    const auto rows = static_cast<size_t>(m.rows);
    touch_range(m.quant->q, rows * m.quant->ldq);
    touch_range(m.quant->scales, rows * m.quant->lds * sizeof(uint16_t));
  };
  for (const auto& [k, e] : experts_) {
    touch(e.gate);
    touch(e.up);
    touch(e.down);
  }
}

}  // namespace dsv2
