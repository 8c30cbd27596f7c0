// The version of this build of dsv2: the project version (CMake's
// project(VERSION), the one place it is written) and the git revision the
// binaries were built from. What every binary's `--version` prints.
// Thread-safe: the values are constants of the binary.
//
// The definitions are generated at build time (base/version.cmake writes
// the build tree's base/version.cc from base/version.cc.in, and rewrites it
// only when the revision changed: a new commit relinks what links
// dsv2_version and recompiles nothing else). Link `dsv2_version`.
#ifndef DSV2_BASE_VERSION_H_
#define DSV2_BASE_VERSION_H_

#include <string_view>

namespace dsv2 {

// "MAJOR.MINOR.PATCH", e.g. "0.5.0".
std::string_view ProjectVersion();

// `git describe --always --dirty` of the checkout when it was built (e.g.
// "8d06627c1a2b", "8d06627c1a2b-dirty"), else $DSV2_GIT_REVISION of the
// build's environment (a checkout without .git, e.g. a container build),
// else "unknown".
std::string_view GitRevision();

// One line, "<ProjectVersion()> (git <GitRevision()>)", e.g.
// "0.5.0 (git 8d06627c1a2b)"; every binary's --version prints it after its
// name ("dsv2-attention 0.5.0 (git 8d06627c1a2b)").
std::string_view VersionString();

}  // namespace dsv2

#endif  // DSV2_BASE_VERSION_H_
