// ApiKeys: the API keys of the public port (--api-key-file), checked against
// a request's `authorization: Bearer KEY` metadata (DESIGN.md section 1:
// the service edge).
//
// The file: one key per line; surrounding whitespace is trimmed; blank
// lines and lines starting with '#' are skipped. A key is 16 to 4,096
// printable ASCII characters without spaces (what fits an HTTP header and
// is long enough not to be guessed). The file is looked at again at most
// once per `reload_interval` when a request is checked; when its contents
// changed (inode, size or modification time) it is read again, so keys are
// rotated by rewriting or replacing the file (a Kubernetes Secret update
// swaps a symlink), without a restart. A changed file that cannot be read
// or holds no valid key keeps the previous keys (logged once per change):
// a half-written file must not lock every client out.
//
// Comparison: only SHA-256 digests of the keys are kept; the presented
// key's digest is compared with every one in constant time (CRYPTO_memcmp,
// no early exit), so timing says nothing about which bytes matched.
//
// Thread-safety: Check and key_count may be called from any thread.
#ifndef DSV2_SERVICE_API_KEYS_H_
#define DSV2_SERVICE_API_KEYS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct stat;  // <sys/stat.h>

namespace dsv2::service {

// Why a request was refused; the label of dsv2_auth_failures_total.
enum class AuthFailure {
  kNone,
  kMissingKey,  // no authorization metadata, or not "Bearer KEY"
  kWrongKey,    // a well-formed key that is not in the file
};
const char* AuthFailureName(AuthFailure failure);

class ApiKeys {
 public:
  // Reads `path`. InvalidArgument when it cannot be read, holds a malformed
  // key (the message names the line, never the key) or no key at all.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(
      std::string path, absl::Duration reload_interval = absl::Seconds(1));

  // OK when `authorization` (the metadata value, empty when absent) is
  // "Bearer KEY" (the scheme case-insensitive, RFC 6750) with a key of the
  // file; else Unauthenticated, and *failure says why (may be null).
  absl::Status Check(absl::string_view authorization, AuthFailure* failure = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Keys in use now.
  int key_count() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Digest = std::array<uint8_t, 32>;
  // What identifies a version of the file.
  struct FileId {
    uint64_t inode = 0, size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileId&) const = default;
  };
  static Digest DigestOf(absl::string_view key);  // SHA-256
  static FileId IdOf(const struct stat& st);
  ApiKeys(std::string path, absl::Duration reload_interval)
      : path_(std::move(path)), reload_interval_(reload_interval) {}
  // Reads and parses the file; InvalidArgument as Load says.
  static absl::StatusOr<std::vector<Digest>> ReadKeys(const std::string& path, FileId* id);
  // Looks at the file when the interval passed; re-reads it when changed.
  void MaybeReload() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  const absl::Duration reload_interval_;
  mutable absl::Mutex mu_;
  std::vector<Digest> digests_ ABSL_GUARDED_BY(mu_);
  FileId file_ ABSL_GUARDED_BY(mu_);     // of the keys in use
  FileId refused_ ABSL_GUARDED_BY(mu_);  // a changed file last refused
  absl::Time next_look_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_API_KEYS_H_
