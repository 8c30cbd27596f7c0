#include "base/data_dir.h"

#include <cstdlib>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// The installed relative path from bin/ to share/dsv2 (CMake computes it
// from CMAKE_INSTALL_BINDIR and CMAKE_INSTALL_DATADIR; relative, so the
// prefix can move).
#ifndef DSV2_BIN_TO_DATA
#define DSV2_BIN_TO_DATA "../share/dsv2"
#endif

namespace dsv2 {

namespace fs = std::filesystem;

absl::StatusOr<fs::path> ExecutableDir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return absl::NotFoundError(
        absl::StrCat("cannot locate the running executable (/proc/self/exe: ", ec.message(), ")"));
  }
  return exe.parent_path();
}

absl::StatusOr<fs::path> FindDataDir(const std::optional<std::string>& env_override,
                                     const fs::path& exe_dir) {
  std::error_code ec;
  if (env_override && !env_override->empty()) {
    if (!fs::is_directory(*env_override, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("DSV2_DATA_DIR=", *env_override, ": no such directory"));
    }
    return fs::absolute(*env_override, ec).lexically_normal();
  }
  if (exe_dir.empty()) {
    return absl::NotFoundError(
        "cannot find dsv2's data directory: the executable's location is unknown (set "
        "DSV2_DATA_DIR)");
  }
  std::vector<fs::path> candidates = {(exe_dir / DSV2_BIN_TO_DATA).lexically_normal()};
  const fs::path build_tree = (exe_dir / ".." / "share" / "dsv2").lexically_normal();
  if (build_tree != candidates.front()) candidates.push_back(build_tree);
  std::vector<std::string> tried;
  for (const fs::path& c : candidates) {
    if (fs::is_directory(c, ec)) return c;
    tried.push_back(c.string());
  }
  return absl::NotFoundError(absl::StrCat("cannot find dsv2's data directory (looked in ",
                                          absl::StrJoin(tried, ", "),
                                          "); install dsv2, or set DSV2_DATA_DIR"));
}

absl::StatusOr<fs::path> DataDir() {
  const char* env = std::getenv("DSV2_DATA_DIR");
  std::optional<std::string> override_dir;
  if (env != nullptr) override_dir = env;
  absl::StatusOr<fs::path> exe_dir = ExecutableDir();
  return FindDataDir(override_dir, exe_dir.ok() ? *exe_dir : fs::path());
}

}  // namespace dsv2
