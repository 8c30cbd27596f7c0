#include "service/api_keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

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

ApiKeys::Digest ApiKeys::DigestOf(absl::string_view key) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
  return d;
}

ApiKeys::FileId ApiKeys::IdOf(const struct stat& st) {
  return FileId{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

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
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat("API key file ", path, ": cannot open it"));
  }
  struct stat before {
  }, after{};
  std::string text;
  bool read_ok = fstat(fd, &before) == 0 && S_ISREG(before.st_mode) &&
                 static_cast<uint64_t>(before.st_size) <= kMaxFileBytes;
  if (read_ok) {
    text.resize(static_cast<size_t>(before.st_size));
    size_t got = 0;
    while (got < text.size()) {
      const ssize_t n = read(fd, text.data() + got, text.size() - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    // Rewritten in place while we read: refused now, read again at the next
    // look (its identity has changed). Writers should rename a new file in.
    read_ok = got == text.size() && fstat(fd, &after) == 0 && IdOf(after) == IdOf(before);
  }
  close(fd);
  if (!read_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "API key file ", path, ": not a regular file of at most 1 MiB, or changed while read"));
  }
  *id = IdOf(before);
  std::vector<Digest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    if (!ValidKey(line)) {
      // The key itself is never echoed: it may be a real one with a typo.
      return absl::InvalidArgumentError(
          absl::StrCat("API key file ", path, " line ", line_number, ": a key is ", kMinKeyLength,
                       " to ", kMaxKeyLength, " printable ASCII characters without spaces"));
    }
    digests.push_back(DigestOf(line));
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
  FileId in_use, refused;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now < next_look_) return;
    next_look_ = now + reload_interval_;  // one caller per interval looks
    in_use = file_;
    refused = refused_;
  }
  // The file is looked at and read outside mu_: a slow filesystem delays
  // this one call, not every caller.
  struct stat st {};
  const FileId unstattable{0, 0, -1};
  FileId seen = unstattable;
  if (stat(path_.c_str(), &st) == 0) seen = IdOf(st);
  if (seen == in_use || seen == refused) return;
  FileId id;
  absl::StatusOr<std::vector<Digest>> digests =
      seen == unstattable
          ? absl::InvalidArgumentError(absl::StrCat("API key file ", path_, ": cannot stat it"))
          : ReadKeys(path_, &id);
  absl::MutexLock lock(&mu_);
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
    const Digest presented = DigestOf(key);
    MaybeReload();
    bool match = false;
    {
      absl::MutexLock lock(&mu_);
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
