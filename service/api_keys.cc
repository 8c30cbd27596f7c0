#include "service/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dsv2::service {
namespace {

constexpr size_t kMinKeyLength = 16;
constexpr size_t kMaxKeyLength = 4096;
constexpr size_t kMaxFileBytes = 1 << 20;

bool ValidKey(absl::string_view key) {
  if (key.size() < kMinKeyLength || key.size() > kMaxKeyLength) return false;
  for (char c : key) {
    if (c <= ' ' || c > '~') return false;  // printable ASCII, no space
  }
  return true;
}

}  // namespace

const char* AuthFailureName(AuthFailure failure) {
  switch (failure) {
    case AuthFailure::kNone:
      return "none";
    case AuthFailure::kMissingKey:
      return "missing_key";
    case AuthFailure::kWrongKey:
      return "wrong_key";
  }
  return "unknown";
}

absl::StatusOr<std::vector<ApiKeys::Digest>> ApiKeys::ReadKeys(const std::string& path,
                                                               FileId* id) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("API key file ", path, ": cannot stat it"));
  }
  *id = FileId{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
               static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("API key file ", path, ": not a regular file of at most 1 MiB"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::InvalidArgumentError(absl::StrCat("API key file ", path, ": cannot read it"));
  std::stringstream text;
  text << in.rdbuf();
  std::vector<Digest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text.str(), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    if (!ValidKey(line)) {
      // The key itself is never echoed: it may be a real one with a typo.
      return absl::InvalidArgumentError(
          absl::StrCat("API key file ", path, " line ", line_number, ": a key is ", kMinKeyLength,
                       " to ", kMaxKeyLength, " printable ASCII characters without spaces"));
    }
    Digest d;
    SHA256(reinterpret_cast<const unsigned char*>(line.data()), line.size(), d.data());
    digests.push_back(d);
  }
  if (digests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("API key file ", path, " holds no key"));
  }
  return digests;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(std::string path,
                                                       absl::Duration reload_interval) {
  FileId id;
  absl::StatusOr<std::vector<Digest>> digests = ReadKeys(path, &id);
  if (!digests.ok()) return digests.status();
  std::unique_ptr<ApiKeys> keys(new ApiKeys(std::move(path), reload_interval));
  absl::MutexLock lock(&keys->mu_);
  keys->digests_ = *std::move(digests);
  keys->file_ = id;
  keys->next_look_ = absl::Now() + reload_interval;
  return keys;
}

void ApiKeys::MaybeReload() {
  const absl::Time now = absl::Now();
  if (now < next_look_) return;
  next_look_ = now + reload_interval_;
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) {
    const FileId unstattable{0, 0, -1};
    if (refused_ == unstattable) return;
    refused_ = unstattable;
    spdlog::warn("API key file {}: cannot stat it; keeping the {} keys in use", path_,
                 digests_.size());
    return;
  }
  const FileId seen{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                    static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  if (seen == file_ || seen == refused_) return;
  FileId id;
  absl::StatusOr<std::vector<Digest>> digests = ReadKeys(path_, &id);
  if (!digests.ok()) {
    refused_ = seen;
    spdlog::warn("{}; keeping the {} keys in use", std::string(digests.status().message()),
                 digests_.size());
    return;
  }
  digests_ = *std::move(digests);
  file_ = id;
  refused_ = FileId{};
  spdlog::info("API key file {}: {} keys", path_, digests_.size());
}

absl::Status ApiKeys::Check(absl::string_view authorization, AuthFailure* failure) {
  AuthFailure why = AuthFailure::kNone;
  absl::Status status;
  absl::string_view key = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (key.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(key.substr(0, kScheme.size()), kScheme)) {
    why = AuthFailure::kMissingKey;
    status = absl::UnauthenticatedError(
        "an API key is required: metadata \"authorization: Bearer KEY\"");
  } else {
    key = absl::StripLeadingAsciiWhitespace(key.substr(kScheme.size()));
    Digest presented;
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), presented.data());
    bool match = false;
    {
      absl::MutexLock lock(&mu_);
      MaybeReload();
      // Every digest is compared: no early exit.
      for (const Digest& d : digests_) {
        match |= CRYPTO_memcmp(d.data(), presented.data(), d.size()) == 0;
      }
    }
    if (!match) {
      why = AuthFailure::kWrongKey;
      status = absl::UnauthenticatedError("the API key is not valid");
    }
  }
  if (failure != nullptr) *failure = why;
  return status;
}

int ApiKeys::key_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(digests_.size());
}

}  // namespace dsv2::service
