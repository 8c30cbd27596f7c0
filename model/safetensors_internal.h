// The safetensors file parser of model/safetensors.h, exposed for its tests
// and fuzz target (tests/fuzz/safetensors_fuzz.cc); not a public API.
#ifndef DSV2_MODEL_SAFETENSORS_INTERNAL_H_
#define DSV2_MODEL_SAFETENSORS_INTERNAL_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/safetensors.h"

namespace dsv2::safetensors_internal {

// Parses and validates a whole file image [base, base + size): the 8-byte
// header length, the JSON header (entries, dtypes, shapes, offsets covering
// the data exactly, __metadata__) and the data bounds. On success every
// TensorView points inside the image. `file` (a basename) names the file in
// errors. InvalidArgument for anything malformed; never reads outside the
// image.
absl::StatusOr<std::vector<TensorView>> ParseImage(const std::string& file, const std::byte* base,
                                                   size_t size);

}  // namespace dsv2::safetensors_internal

#endif  // DSV2_MODEL_SAFETENSORS_INTERNAL_H_
