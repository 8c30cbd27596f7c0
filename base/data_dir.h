// Where dsv2 finds, at run time, the read-only data it ships (the source's
// model/data/: the DeepSeek-V2 tokenizer), and where its executable lives.
// No path of the source or build tree is compiled in: a build tree and an
// install prefix are found the same way, relative to the running binary, and
// either can be moved.
//
// DataDir(), the first of:
//   1. $DSV2_DATA_DIR, when set and not empty (an explicit override; an error
//      if it is no directory, never silently skipped);
//   2. <executable dir>/../share/dsv2: an install prefix (PREFIX/bin/dsv2 ->
//      PREFIX/share/dsv2, what `cmake --install` writes), and the build tree
//      alike (build/tools/dsv2 -> build/share/dsv2, a link to the source's
//      model/data that CMake makes at configure time). With a non-default
//      CMAKE_INSTALL_BINDIR / DATADIR, the installed relative path is tried
//      first.
//
// Thread-safe: no state; reads the environment and the file system.
#ifndef DSV2_BASE_DATA_DIR_H_
#define DSV2_BASE_DATA_DIR_H_

#include <filesystem>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace dsv2 {

// The directory of the running executable (/proc/self/exe, symlinks
// resolved). NotFound when /proc is unreadable.
absl::StatusOr<std::filesystem::path> ExecutableDir();

// The data directory by the rules above. NotFound naming every place looked
// at when none is a directory; InvalidArgument for a $DSV2_DATA_DIR that is
// no directory.
absl::StatusOr<std::filesystem::path> DataDir();

// The rules as a pure function (for tests): `env_override` is
// $DSV2_DATA_DIR (nullopt or "" = unset), `exe_dir` the executable's
// directory ("" = unknown).
absl::StatusOr<std::filesystem::path> FindDataDir(const std::optional<std::string>& env_override,
                                                  const std::filesystem::path& exe_dir);

}  // namespace dsv2

#endif  // DSV2_BASE_DATA_DIR_H_
