// The model dsv2 serves when no --model is given (`dsv2 run`, `dsv2 up`):
// $DSV2_DEFAULT_MODEL when set and not empty, else the shipped demo model,
// <data dir>/demo-stories (base/data_dir.h: found relative to the binary,
// in a build tree and in an install prefix alike). The demo model is a tiny
// DeepSeek-V2-architecture model trained by tools/demo_model/ on generated
// children's stories (model/data/demo-stories/SOURCE.md).
//
// Thread-safe: reads the environment and the file system only.
#ifndef DSV2_TOOLS_DSV2_DEFAULT_MODEL_H_
#define DSV2_TOOLS_DSV2_DEFAULT_MODEL_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace dsv2 {

// The shipped demo model's folder under the data directory.
inline constexpr char kDemoModelFolder[] = "demo-stories";

// `flag` (--model) when given, else the default above, as an absolute path.
// NotFound naming the directory when it holds no config.json.
absl::StatusOr<std::string> ResolveModelDir(const std::optional<std::string>& flag);

}  // namespace dsv2

#endif  // DSV2_TOOLS_DSV2_DEFAULT_MODEL_H_
