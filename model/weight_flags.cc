#include "model/weight_flags.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/weights.h"

namespace dsv2 {

void DefineWeightFlags(flags::FlagSet& flags, std::string_view weights_help,
                       std::string_view lm_head_help, WeightFlags* out) {
  flags.String("weights", &out->weights, std::string(weights_help));
  flags.Bool("experts-only", &out->experts_only,
             "with --weights: quantize the shared and routed experts only");
  flags.Bool("lm-head-bf16", &out->lm_head_bf16,
             absl::StrCat("with --weights: keep lm_head ",
                          absl::string_view(lm_head_help.data(), lm_head_help.size()),
                          " (default: int8)"));
}

void DefineQuantActivationsFlag(flags::FlagSet& flags, WeightFlags* out) {
  flags.String("quant-activations", &out->quant_activations,
               "how int8/int4 weights compute: int8 (activations quantized per group of 32, "
               "integer dot product) or f32 (exact f32 products with the dequantized weights; "
               "slower)");
}

absl::StatusOr<WeightQuantization> WeightQuantizationFromFlags(const WeightFlags& f,
                                                               bool require_format) {
  WeightQuantization q;
  absl::StatusOr<WeightQuantization::Format> format = ParseWeightFormat(f.weights);
  if (!format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--weights: ", format.status().message()));
  }
  q.format = *format;
  q.experts_only = f.experts_only;
  q.lm_head_bf16 = f.lm_head_bf16;
  if (f.quant_activations != "int8" && f.quant_activations != "f32") {
    return absl::InvalidArgumentError(
        absl::StrCat("--quant-activations: \"", f.quant_activations, "\"; expected int8 or f32"));
  }
  q.int8_activations = f.quant_activations == "int8";
  if (q.format == WeightQuantization::Format::kNone) {
    if (require_format) return absl::InvalidArgumentError("--weights must be int8 or int4");
    if (q.experts_only || q.lm_head_bf16) {
      return absl::InvalidArgumentError(
          "--experts-only and --lm-head-bf16 need --weights int8 or int4");
    }
  }
  return q;
}

}  // namespace dsv2
