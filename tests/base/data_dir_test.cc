// base/data_dir.h: the shipped data found by $DSV2_DATA_DIR, else relative
// to the executable (install tree, build tree); never a compiled-in path.
#include "base/data_dir.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

namespace fs = std::filesystem;

fs::path FreshDir(const std::string& name) {
  const fs::path d = fs::path(::testing::TempDir()) / ("data_dir_test_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(DataDirTest, InstallTreeIsBinsSiblingShareDsv2) {
  const fs::path prefix = FreshDir("install");
  fs::create_directories(prefix / "bin");
  fs::create_directories(prefix / "share" / "dsv2");
  auto got = FindDataDir(std::nullopt, prefix / "bin");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (prefix / "share" / "dsv2").lexically_normal());
  // An empty override counts as unset.
  got = FindDataDir(std::string(), prefix / "bin");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (prefix / "share" / "dsv2").lexically_normal());
}

TEST(DataDirTest, OverrideWinsAndMustExist) {
  const fs::path prefix = FreshDir("override");
  fs::create_directories(prefix / "bin");
  fs::create_directories(prefix / "share" / "dsv2");
  fs::create_directories(prefix / "elsewhere");
  auto got = FindDataDir((prefix / "elsewhere").string(), prefix / "bin");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, prefix / "elsewhere");
  got = FindDataDir((prefix / "missing").string(), prefix / "bin");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find("DSV2_DATA_DIR=" + (prefix / "missing").string()),
            std::string::npos)
      << got.status();
}

TEST(DataDirTest, NotFoundNamesWhereItLooked) {
  const fs::path prefix = FreshDir("missing");
  fs::create_directories(prefix / "bin");
  auto got = FindDataDir(std::nullopt, prefix / "bin");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find((prefix / "share" / "dsv2").string()), std::string::npos)
      << got.status();
  EXPECT_EQ(FindDataDir(std::nullopt, fs::path()).status().code(), absl::StatusCode::kNotFound);
}

// This test binary lives in the build tree (build/tests/): build/share/dsv2
// is CMake's link to the source's model/data.
TEST(DataDirTest, BuildTreeFindsTheSourcesData) {
  unsetenv("DSV2_DATA_DIR");
  auto exe = ExecutableDir();
  ASSERT_TRUE(exe.ok()) << exe.status();
  EXPECT_TRUE(exe->is_absolute());
  auto got = DataDir();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fs::canonical(*got), fs::canonical(fs::path(DSV2_SOURCE_DIR) / "model" / "data"));
  EXPECT_TRUE(fs::exists(*got / "deepseek-v2" / "tokenizer.json"));
}

}  // namespace
}  // namespace dsv2
