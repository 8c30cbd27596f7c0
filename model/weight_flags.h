// The weight-quantization flags of every command that loads or writes
// weights (dsv2 run/up/quantize/eval-kld/make-random-model, dsv2-attention,
// dsv2-expert): --weights FORMAT, --experts-only, --lm-head-bf16, defined
// and checked in one place so they mean the same everywhere.
//
// Thread-safety: as flags::FlagSet (one thread).
#ifndef DSV2_MODEL_WEIGHT_FLAGS_H_
#define DSV2_MODEL_WEIGHT_FLAGS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "base/flags.h"
#include "model/config.h"

namespace dsv2 {

// The flags' values as parsed (the format still a name).
struct WeightFlags {
  std::string weights = "none";
  bool experts_only = false;
  bool lm_head_bf16 = false;
  std::string quant_activations = "int8";
};

// Defines the three flags on `flags`, writing into *out (which must outlive
// the parse). weights_help: what --weights does in this command;
// lm_head_help: what --lm-head-bf16 keeps lm_head as.
void DefineWeightFlags(flags::FlagSet& flags, std::string_view weights_help,
                       std::string_view lm_head_help, WeightFlags* out);

// --quant-activations int8|f32 (how quantized weights compute; commands
// that compute with them: run, up, eval-kld, the services) into *out.
void DefineQuantActivationsFlag(flags::FlagSet& flags, WeightFlags* out);

// The quantization the flags ask for. InvalidArgument, naming the flag, for
// an unknown --weights or --quant-activations, and for --experts-only or --lm-head-bf16 without
// --weights int8|int4 (they would mean nothing); with require_format, for
// --weights none too (dsv2 quantize).
absl::StatusOr<WeightQuantization> WeightQuantizationFromFlags(const WeightFlags& f,
                                                               bool require_format = false);

}  // namespace dsv2

#endif  // DSV2_MODEL_WEIGHT_FLAGS_H_
