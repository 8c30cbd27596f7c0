// ApiKeys: the key file's format, the Bearer check, and rotation by
// rewriting or replacing the file (service/api_keys.h).
#include "service/api_keys.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace dsv2::service {
namespace {

constexpr char kKeyA[] = "dsv2-key-aaaaaaaaaaaaaaaaaaaaaa";
constexpr char kKeyB[] = "dsv2-key-bbbbbbbbbbbbbbbbbbbbbb";

class ApiKeysTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(testing::TempDir()) /
           absl::StrCat("api_keys_", getpid(), "_",
                        testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "keys").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `text` to `path` through a new file renamed over it (what an
  // editor or a Secret update does): a new inode, seen at once.
  static void Write(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp, std::ios::binary | std::ios::trunc) << text;
    ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0);
  }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(ApiKeysTest, AcceptsOnlyAListedBearerKey) {
  Write(path_, absl::StrCat("# clients\n\n  ", kKeyA, "  \n", kKeyB, "\n"));
  absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(path_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ((*keys)->key_count(), 2);
  AuthFailure why = AuthFailure::kNone;
  EXPECT_TRUE((*keys)->Check(absl::StrCat("Bearer ", kKeyA), &why).ok());
  EXPECT_EQ(why, AuthFailure::kNone);
  EXPECT_TRUE((*keys)->Check(absl::StrCat("bearer ", kKeyB)).ok());  // the scheme is caseless
  struct Refused {
    std::string authorization;
    AuthFailure why;
  };
  for (const Refused& r : std::initializer_list<Refused>{
           {"", AuthFailure::kMissingKey},
           {kKeyA, AuthFailure::kMissingKey},  // no scheme
           {absl::StrCat("Basic ", kKeyA), AuthFailure::kMissingKey},
           {"Bearer ", AuthFailure::kMissingKey},
           {"Bearer dsv2-key-cccccccccccccccccccccc", AuthFailure::kWrongKey},
           {absl::StrCat("Bearer ", kKeyA, "x"), AuthFailure::kWrongKey},
           {absl::StrCat("Bearer ", std::string(kKeyA).substr(1)), AuthFailure::kWrongKey},
       }) {
    const absl::Status st = (*keys)->Check(r.authorization, &why);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << r.authorization;
    EXPECT_EQ(why, r.why) << r.authorization;
    EXPECT_FALSE(absl::StrContains(st.message(), kKeyA)) << st;
  }
  EXPECT_STREQ(AuthFailureName(AuthFailure::kWrongKey), "wrong_key");
}

TEST_F(ApiKeysTest, BadFilesAreRefusedWithoutEchoingKeys) {
  EXPECT_EQ(ApiKeys::Load(path_).status().code(), absl::StatusCode::kInvalidArgument);  // absent
  Write(path_, "# nothing\n\n");
  EXPECT_TRUE(absl::StrContains(ApiKeys::Load(path_).status().message(), "holds no key"));
  Write(path_, absl::StrCat(kKeyA, "\nshort-secret\n"));
  absl::Status st = ApiKeys::Load(path_).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "line 2")) << st;
  EXPECT_FALSE(absl::StrContains(st.message(), "short-secret")) << st;
  Write(path_, absl::StrCat("two words-in-one-key-line\n"));
  EXPECT_EQ(ApiKeys::Load(path_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKeys::Load(dir_.string()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ApiKeysTest, RotatesWhenTheFileChangesAndKeepsKeysOverABadFile) {
  Write(path_, absl::StrCat(kKeyA, "\n"));
  absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(path_, absl::ZeroDuration());
  ASSERT_TRUE(keys.ok()) << keys.status();
  const std::string a = absl::StrCat("Bearer ", kKeyA), b = absl::StrCat("Bearer ", kKeyB);
  EXPECT_TRUE((*keys)->Check(a).ok());
  EXPECT_FALSE((*keys)->Check(b).ok());
  // Rotation: B replaces A.
  Write(path_, absl::StrCat(kKeyB, "\n"));
  EXPECT_TRUE((*keys)->Check(b).ok());
  EXPECT_FALSE((*keys)->Check(a).ok());
  // A half-written or emptied file keeps B (a client must not be locked out).
  Write(path_, "");
  EXPECT_TRUE((*keys)->Check(b).ok());
  Write(path_, "short\n");
  EXPECT_TRUE((*keys)->Check(b).ok());
  std::filesystem::remove(path_);
  EXPECT_TRUE((*keys)->Check(b).ok());
  // Kubernetes' Secret volume: the path is a symlink swapped to a new file.
  const std::string v1 = (dir_ / "v1").string(), link = (dir_ / "link").string();
  Write(v1, absl::StrCat(kKeyA, "\n", kKeyB, "\n"));
  std::filesystem::create_symlink(v1, path_);
  EXPECT_TRUE((*keys)->Check(a).ok());
  EXPECT_EQ((*keys)->key_count(), 2);
  const std::string v2 = (dir_ / "v2").string();
  Write(v2, absl::StrCat(kKeyA, "\n"));
  std::filesystem::create_symlink(v2, link);
  ASSERT_EQ(std::rename(link.c_str(), path_.c_str()), 0);
  EXPECT_FALSE((*keys)->Check(b).ok());
  EXPECT_TRUE((*keys)->Check(a).ok());
}

// Without a change the file is looked at once per reload interval only.
TEST_F(ApiKeysTest, LooksAtTheFileOncePerInterval) {
  Write(path_, absl::StrCat(kKeyA, "\n"));
  absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(path_, absl::Hours(1));
  ASSERT_TRUE(keys.ok()) << keys.status();
  Write(path_, absl::StrCat(kKeyB, "\n"));
  EXPECT_TRUE((*keys)->Check(absl::StrCat("Bearer ", kKeyA)).ok());
  EXPECT_FALSE((*keys)->Check(absl::StrCat("Bearer ", kKeyB)).ok());
}

}  // namespace
}  // namespace dsv2::service
