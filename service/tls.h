// Transport security of dsv2's gRPC servers and channels (DESIGN.md section
// 9a; docs/security.md is the threat model).
//
// Files: --tls-cert (this process's certificate chain, PEM), --tls-key (its
// private key, PEM) and --tls-ca (the cluster's certificate authority, PEM).
// gRPC's FileWatcherCertificateProvider reads them again every
// kTlsRefreshInterval, so replacing the files (cert-manager renewing a
// Secret) rotates certificates without a restart; connections made before
// keep their session.
//
// Where TLS applies, when the files are given:
//   - a member's port (attention node, expert shard) and the coordinator's
//     internal port: mutual TLS only; a client without a certificate signed
//     by the cluster authority fails the handshake;
//   - the coordinator's public port: TLS with the server certificate only
//     (clients authenticate with API keys);
//   - channels between members: present this process's certificate, verify
//     the peer's against the authority and check the role its identity
//     names (not the host name: members are reached at pod addresses).
// Without the files everything is plaintext (`dsv2 up --insecure`).
//
// Identity: a member certificate's URI subjectAltName is
// "spiffe://dsv2/<role>" or "spiffe://dsv2/<role>/<id>", role one of
// coordinator, attention, expert; id: the attention node's name, or for an
// expert shard its shard id: the id itself in decimal ("3") or a StatefulSet
// pod name ending in it ("dsv2-expert-3", as cert-manager's csi-driver
// writes ${POD_NAME}; ExpertShardIdOf). A certificate without an id speaks
// for every member of its role (one Kubernetes Secret per role); with one,
// only for that member.
//
// Thread-safety: TlsContext is immutable after Create and safe for
// concurrent use; the free functions are pure.
#ifndef DSV2_SERVICE_TLS_H_
#define DSV2_SERVICE_TLS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class ChannelCredentials;
class ServerContext;
class ServerCredentials;
namespace experimental {
class FileWatcherCertificateProvider;
class CertificateVerifier;
}  // namespace experimental
}  // namespace grpc

namespace dsv2::metrics {
class MetricsServer;
}  // namespace dsv2::metrics

namespace dsv2::service {

inline constexpr absl::Duration kTlsRefreshInterval = absl::Seconds(1);

enum class MemberRole { kCoordinator, kAttention, kExpert };
const char* MemberRoleName(MemberRole role);

// What a member certificate says its holder is.
struct MemberIdentity {
  MemberRole role = MemberRole::kCoordinator;
  std::string id;  // empty: any member of the role
  bool operator==(const MemberIdentity&) const = default;
};

// "spiffe://dsv2/<role>[/<id>]".
std::string MemberIdentityUri(const MemberIdentity& identity);
// The shard id an expert identity's id binds: the whole id when it is a
// canonical decimal (no sign, no leading zero, below 2^31), else the
// canonical decimal after its last '-' ("dsv2-expert-3" -> 3); nullopt when
// it names none ("", "expert", "x-03"): such a certificate may register as
// no shard.
std::optional<int32_t> ExpertShardIdOf(absl::string_view id);
// The inverse; InvalidArgument for anything else (another trust domain, an
// unknown role, an id that is empty or not 1-64 of [A-Za-z0-9._-]).
absl::StatusOr<MemberIdentity> ParseMemberIdentityUri(absl::string_view uri);

struct TlsFiles {
  std::string cert, key, ca;
  // All three given. (Some but not all is an error of ValidateTlsFiles.)
  bool enabled() const { return !cert.empty() && !key.empty() && !ca.empty(); }
};

// OK when no file is given, or all three are readable PEM: the certificate
// chain's first certificate matches the key, and the chain verifies against
// the authority file (signed by one of its authorities, valid now).
// InvalidArgument naming the flag otherwise.
absl::Status ValidateTlsFiles(const TlsFiles& files);

// The times the certificate (--tls-cert, its first) and the authority
// (--tls-ca: the first of its certificates to expire) expire, read from the
// files now.
struct CertificateExpiry {
  absl::Time cert = absl::InfinitePast();
  absl::Time ca = absl::InfinitePast();
};
absl::StatusOr<CertificateExpiry> ReadCertificateExpiry(const TlsFiles& files);

// A process's TLS configuration: one file watcher for all its servers and
// channels.
class TlsContext {
 public:
  // Plaintext everywhere.
  static std::shared_ptr<const TlsContext> Insecure();
  // Validates the files (ValidateTlsFiles); `files` not enabled: Insecure().
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(const TlsFiles& files);

  ~TlsContext();

  bool enabled() const { return provider_ != nullptr; }
  const TlsFiles& files() const { return files_; }

  // Credentials of a server port: mutual TLS (`require_client_certificate`:
  // internal ports) or server-only TLS (the public port); plaintext when
  // insecure.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials(bool require_client_certificate) const;

  // Credentials of a channel to a member or to the coordinator's internal
  // port: this process's certificate, the authority, and a check that the
  // peer's identity has one of `roles`; plaintext when insecure.
  std::shared_ptr<grpc::ChannelCredentials> MemberChannelCredentials(
      const std::vector<MemberRole>& roles) const;

 private:
  TlsContext(TlsFiles files,
             std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider);
  TlsFiles files_;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
};

// Credentials of a client of the public API: TLS verifying the server's
// certificate (and host name) against the PEM authority in `ca_file`, or
// plaintext when `ca_file` is empty.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> PublicChannelCredentials(
    const std::string& ca_file);

// The identity of the caller of an RPC: nullopt on a plaintext connection
// (an insecure cluster); on a TLS connection the one dsv2 member identity
// among the client certificate's URI subjectAltNames, PermissionDenied when
// there is no client certificate or it names none or several.
absl::StatusOr<std::optional<MemberIdentity>> CallerIdentity(const grpc::ServerContext& context);

// OK when the caller may call an RPC reserved to `roles`: its certificate
// names one of them, or the connection is plaintext (an insecure cluster);
// PermissionDenied naming the caller and the RPC otherwise.
absl::Status CheckCallerRole(const grpc::ServerContext& context,
                             const std::vector<MemberRole>& roles, absl::string_view rpc);

// When `tls` is enabled: exports dsv2_tls_certificate_expiry_timestamp_seconds
// on `server`, read from the files at each scrape (an unreadable file keeps
// the last value and is logged), and dsv2_tls_handshake_failures_total
// {reason} (TlsHandshakeFailureCounts). `tls` is kept alive by the hook.
void ExportTlsMetrics(std::shared_ptr<const TlsContext> tls, metrics::MetricsServer& server);

// TLS handshakes this process failed, as a server or as a client, by reason.
// gRPC fails them before any of our code runs and reports each one only in
// its own log ("Handshake failed with fatal error ...", OpenSSL's text);
// RouteGrpcLogs hooks that log, so these are counted from it.
struct TlsHandshakeFailures {
  int64_t no_client_certificate = 0;    // a client without a certificate where one is required
  int64_t certificate_not_trusted = 0;  // another authority's, expired, or otherwise unverifiable
  int64_t not_tls = 0;                  // the peer spoke plaintext or another protocol
  int64_t other = 0;
};
TlsHandshakeFailures TlsHandshakeFailureCounts();
// Counts `message` when it is gRPC's report of a failed TLS handshake;
// returns whether it was one. Thread-safe.
bool CountTlsHandshakeFailure(absl::string_view message);
// Sends gRPC's own log lines to spdlog (at their severity) and counts the
// failed TLS handshakes among them. Process-wide; call once, at start-up
// (InitLogging does).
void RouteGrpcLogs();

// CheckCallerRole for the RPCs only the coordinator may call (SetPlacement,
// LoadExperts, Submit, Cancel); a refusal is logged.
absl::Status CoordinatorOnly(const grpc::ServerContext& context, absl::string_view rpc);

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_TLS_H_
