#include "tools/dsv2/default_model.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/data_dir.h"

namespace dsv2 {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ModelDirOrError(const fs::path& dir, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(dir / "config.json", ec)) {
    return absl::NotFoundError(absl::StrCat(what, dir.string(), ": no config.json (not a model directory)"));
  }
  return fs::absolute(dir, ec).lexically_normal().string();
}

}  // namespace

absl::StatusOr<std::string> ResolveModelDir(const std::optional<std::string>& flag) {
  if (flag) return ModelDirOrError(*flag, "");
  const char* env = std::getenv("DSV2_DEFAULT_MODEL");
  if (env != nullptr && *env != '\0') return ModelDirOrError(env, "DSV2_DEFAULT_MODEL=");
  absl::StatusOr<fs::path> data = DataDir();
  if (!data.ok()) {
    return absl::NotFoundError(absl::StrCat("no --model, and the shipped demo model cannot be "
                                            "found: ", data.status().message()));
  }
  return ModelDirOrError(*data / kDemoModelFolder, "the shipped demo model ");
}

}  // namespace dsv2
