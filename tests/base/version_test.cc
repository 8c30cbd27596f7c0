// base/version.h: the version line, and base/version.cmake's revision rules
// (git checkout, DSV2_GIT_REVISION without one, else "unknown").
#include "base/version.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

namespace fs = std::filesystem;

TEST(VersionTest, ProjectVersionIsCMakesProjectVersion) {
  EXPECT_EQ(ProjectVersion(), DSV2_TEST_PROJECT_VERSION);
  EXPECT_TRUE(std::regex_match(std::string(ProjectVersion()), std::regex(R"(\d+\.\d+\.\d+)")));
}

TEST(VersionTest, VersionStringIsOneLineWithVersionAndRevision) {
  const std::string v(VersionString());
  EXPECT_EQ(v,
            std::string(ProjectVersion()) + " (git " + std::string(GitRevision()) + ")");
  EXPECT_EQ(v.find('\n'), std::string::npos);
}

TEST(VersionTest, RevisionOfAGitCheckoutIsItsCommit) {
  if (!fs::exists(fs::path(DSV2_SOURCE_DIR) / ".git")) GTEST_SKIP() << "not built from git";
  // git describe --always --dirty --abbrev=12: [tag-N-g]<12 hex>[-dirty].
  EXPECT_TRUE(std::regex_search(std::string(GitRevision()), std::regex("[0-9a-f]{12}(-dirty)?$")))
      << GitRevision();
}

// Runs base/version.cmake for a source directory outside any checkout and
// returns the revision it writes.
std::string RevisionOutsideGit(const std::string& env_prefix) {
  const fs::path dir = fs::path(::testing::TempDir()) / "version_cmake";
  fs::remove_all(dir);
  fs::create_directories(dir / "src");
  {
    std::ofstream in(dir / "in.txt");
    in << "@DSV2_VERSION@ @DSV2_GIT_REVISION@\n";
  }
  const std::string cmd =
      env_prefix + " \"" DSV2_TEST_CMAKE "\" -DSOURCE_DIR=" + (dir / "src").string() +
      " -DVERSION=1.2.3 -DIN=" + (dir / "in.txt").string() +
      " -DOUT=" + (dir / "out.txt").string() + " -P \"" DSV2_SOURCE_DIR "/base/version.cmake\"";
  if (std::system(cmd.c_str()) != 0) return "<cmake failed: " + cmd + ">";
  std::ifstream out(dir / "out.txt");
  std::stringstream s;
  s << out.rdbuf();
  return s.str();
}

TEST(VersionTest, WithoutGitTheBuildEnvironmentNamesTheRevision) {
  // (A /tmp inside some checkout would describe that checkout: skip then.)
  if (std::system("git -C \"$(dirname \"$(mktemp -u)\")\" rev-parse >/dev/null 2>&1") == 0) {
    GTEST_SKIP() << "the temporary directory is inside a git checkout";
  }
  EXPECT_EQ(RevisionOutsideGit("env DSV2_GIT_REVISION=abc123"), "1.2.3 abc123\n");
  EXPECT_EQ(RevisionOutsideGit("env -u DSV2_GIT_REVISION"), "1.2.3 unknown\n");
  // Never anything that could break the generated string literal.
  EXPECT_EQ(RevisionOutsideGit("env 'DSV2_GIT_REVISION=a\"b c'"), "1.2.3 a_b_c\n");
}

}  // namespace
}  // namespace dsv2
