// What an attention node sends to the routed experts for one (step, layer,
// micro-batch) and what comes back (DESIGN.md sections 4 and 7). This is
// the in-memory form; the wire format of the data plane serialises exactly
// these fields.
#ifndef DSV2_ROUTER_DISPATCH_H_
#define DSV2_ROUTER_DISPATCH_H_

#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

namespace dsv2::router {

struct Assignment {
  int32_t row = 0;     // index into ExpertDispatch::activations rows
  int32_t expert = 0;  // routed expert id in [0, E)
};

struct ExpertDispatch {
  int32_t layer = 0;
  int32_t num_rows = 0;
  int32_t hidden = 0;               // D
  DType dtype = DType::kF32;        // activation dtype of `activations`
  std::vector<Assignment> assignments;
  // num_rows x hidden values in `dtype` (little-endian), row-major.
  std::vector<std::byte> activations;
};

struct ExpertReply {
  DType dtype = DType::kF32;
  int32_t hidden = 0;
  // One unweighted expert output row per assignment, in assignment order:
  // assignments.size() x hidden values in `dtype`.
  std::vector<std::byte> outputs;
};

}  // namespace dsv2::router

#endif  // DSV2_ROUTER_DISPATCH_H_
