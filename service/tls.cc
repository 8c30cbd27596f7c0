#include "service/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpc/support/log.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_context.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "metrics/metrics.h"
#include "service/certificates.h"
#include "service/openssl_internal.h"

namespace dsv2::service {
namespace {

constexpr absl::string_view kTrustDomain = "spiffe://dsv2/";

bool ValidId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": cannot be read"));
  std::ostringstream s;
  s << in.rdbuf();
  std::string contents = s.str();
  // Certificates and keys are a few KB; a chain of 1 MB is not one.
  if (contents.size() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": larger than 1 MiB"));
  }
  return contents;
}

using openssl_internal::BioPtr;
using openssl_internal::Deleter;
using openssl_internal::EvpKey;
using openssl_internal::PemCertificates;
using openssl_internal::X509Ptr;

X509Ptr FirstCertificate(absl::string_view pem) {
  std::vector<X509Ptr> all = PemCertificates(pem);
  return all.empty() ? nullptr : std::move(all.front());
}

// OK when the chain in `cert_pem` verifies against the authorities in
// `ca_pem` now (signatures, validity dates, CA constraints).
absl::Status VerifyChain(absl::string_view cert_pem, absl::string_view ca_pem) {
  std::vector<X509Ptr> chain = PemCertificates(cert_pem);
  std::vector<X509Ptr> roots = PemCertificates(ca_pem);
  if (chain.empty() || roots.empty()) return absl::InvalidArgumentError("no certificate");
  std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>> store(X509_STORE_new());
  struct StackFree {  // sk_X509_free is a macro
    void operator()(STACK_OF(X509) * st) const { sk_X509_free(st); }
  };
  std::unique_ptr<STACK_OF(X509), StackFree> untrusted(sk_X509_new_null());
  std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>> ctx(
      X509_STORE_CTX_new());
  if (store == nullptr || untrusted == nullptr || ctx == nullptr) {
    return absl::InternalError("out of memory");
  }
  for (X509Ptr& r : roots) X509_STORE_add_cert(store.get(), r.get());
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), chain[0].get(), untrusted.get()) != 1) {
    ERR_clear_error();
    return absl::InternalError("cannot verify");
  }
  const int ok = X509_verify_cert(ctx.get());
  const int err = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  if (ok == 1) return absl::OkStatus();
  return absl::InvalidArgumentError(X509_verify_cert_error_string(err));
}

// The member identity of a verified certificate's URI subjectAltNames:
// exactly one of them must be a dsv2 identity (other URIs are ignored; DNS,
// IP and e-mail names never count). PermissionDenied otherwise.
absl::StatusOr<MemberIdentity> IdentityOfUris(const std::vector<std::string>& uris) {
  std::optional<MemberIdentity> found;
  for (const std::string& uri : uris) {
    if (!absl::StartsWith(uri, kTrustDomain)) continue;
    absl::StatusOr<MemberIdentity> id = ParseMemberIdentityUri(uri);
    if (!id.ok() || found.has_value()) {
      return absl::PermissionDeniedError(
          absl::StrCat("the peer's certificate must name exactly one valid dsv2 member identity (",
                       absl::StrJoin(uris, ", "), ")"));
    }
    found = *id;
  }
  if (!found) {
    return absl::PermissionDeniedError(
        absl::StrCat("the peer's certificate names no dsv2 member identity (",
                     uris.empty() ? "no URI" : absl::StrJoin(uris, ", "), ")"));
  }
  return *found;
}

// Checks the identity a verified peer presented: OK when it is a member of
// one of `roles`.
absl::Status CheckPeerRoles(const std::vector<std::string>& uris,
                            const std::vector<MemberRole>& roles) {
  absl::StatusOr<MemberIdentity> id = IdentityOfUris(uris);
  if (!id.ok()) return id.status();
  for (MemberRole r : roles) {
    if (id->role == r) return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (MemberRole r : roles) names.push_back(MemberRoleName(r));
  return absl::PermissionDeniedError(
      absl::StrCat(MemberIdentityUri(*id), " is not a ", absl::StrJoin(names, " or ")));
}

// Post-handshake check of a channel's peer (the chain was verified against
// the authority before): its identity has one of the expected roles.
class RoleVerifier final : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit RoleVerifier(std::vector<MemberRole> roles) : roles_(std::move(roles)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/, grpc::Status* sync_status) override {
    std::vector<std::string> uris;
    for (const grpc::string_ref& u : request->uri_names()) uris.emplace_back(u.data(), u.size());
    const absl::Status st = CheckPeerRoles(uris, roles_);
    *sync_status = st.ok()
                       ? grpc::Status::OK
                       : grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(st.message()));
    return true;  // decided synchronously
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {}

 private:
  const std::vector<MemberRole> roles_;
};

}  // namespace

const char* MemberRoleName(MemberRole role) {
  switch (role) {
    case MemberRole::kCoordinator:
      return "coordinator";
    case MemberRole::kAttention:
      return "attention";
    case MemberRole::kExpert:
      return "expert";
  }
  return "?";
}

std::string MemberIdentityUri(const MemberIdentity& identity) {
  return absl::StrCat(kTrustDomain, MemberRoleName(identity.role), identity.id.empty() ? "" : "/",
                      identity.id);
}

std::optional<int32_t> ExpertShardIdOf(absl::string_view id) {
  const size_t dash = id.rfind('-');
  const absl::string_view digits = dash == absl::string_view::npos ? id : id.substr(dash + 1);
  // Canonical decimals only, so that a name binds one shard id.
  if (digits.empty() || (digits.size() > 1 && digits[0] == '0') ||
      !absl::c_all_of(digits, [](char c) { return absl::ascii_isdigit(c); })) {
    return std::nullopt;
  }
  int32_t shard_id = 0;
  if (!absl::SimpleAtoi(digits, &shard_id)) return std::nullopt;  // above 2^31 - 1
  return shard_id;
}

absl::StatusOr<MemberIdentity> ParseMemberIdentityUri(absl::string_view uri) {
  if (!absl::StartsWith(uri, kTrustDomain)) {
    return absl::InvalidArgumentError("not a dsv2 member identity (spiffe://dsv2/...)");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(uri.substr(kTrustDomain.size()), '/');
  if (parts.size() > 2) return absl::InvalidArgumentError("member identity has too many parts");
  MemberIdentity out;
  if (parts[0] == "coordinator") {
    out.role = MemberRole::kCoordinator;
  } else if (parts[0] == "attention") {
    out.role = MemberRole::kAttention;
  } else if (parts[0] == "expert") {
    out.role = MemberRole::kExpert;
  } else {
    return absl::InvalidArgumentError("member identity names an unknown role");
  }
  if (parts.size() == 2) {
    if (!ValidId(parts[1])) {
      return absl::InvalidArgumentError("member identity's id must be 1-64 of [A-Za-z0-9._-]");
    }
    out.id = std::string(parts[1]);
  }
  return out;
}

absl::Status ValidateTlsFiles(const TlsFiles& files) {
  const int given = !files.cert.empty() + !files.key.empty() + !files.ca.empty();
  if (given == 0) return absl::OkStatus();
  if (given != 3) {
    return absl::InvalidArgumentError("--tls-cert, --tls-key and --tls-ca go together");
  }
  absl::StatusOr<std::string> cert = ReadSmallFile(files.cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadSmallFile(files.key, "--tls-key");
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> ca = ReadSmallFile(files.ca, "--tls-ca");
  if (!ca.ok()) return ca.status();
  X509Ptr leaf = FirstCertificate(*cert);
  if (leaf == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", files.cert, ": no PEM certificate"));
  }
  BioPtr bio(BIO_new_mem_buf(key->data(), static_cast<int>(key->size())));
  EvpKey pkey(bio != nullptr ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)
                             : nullptr);
  ERR_clear_error();
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", files.key, ": no PEM private key"));
  }
  if (X509_check_private_key(leaf.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", files.key, " is not the key of --tls-cert ", files.cert));
  }
  if (FirstCertificate(*ca) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-ca ", files.ca, ": no PEM certificate"));
  }
  // A certificate the cluster would refuse (another authority, expired)
  // stops the process now rather than failing every handshake later.
  if (absl::Status st = VerifyChain(*cert, *ca); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-cert ", files.cert,
                                                   " does not verify against --tls-ca ", files.ca,
                                                   ": ", st.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<CertificateExpiry> ReadCertificateExpiry(const TlsFiles& files) {
  CertificateExpiry out;
  absl::StatusOr<std::string> cert = ReadSmallFile(files.cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> ca = ReadSmallFile(files.ca, "--tls-ca");
  if (!ca.ok()) return ca.status();
  absl::StatusOr<absl::Time> c = CertificateNotAfter(*cert);
  if (!c.ok()) return c.status();
  // The first of the authorities to expire (a bundle during a rotation).
  out.cert = *c;
  out.ca = absl::InfiniteFuture();
  for (const X509Ptr& cert : PemCertificates(*ca)) {
    std::optional<absl::Time> t = openssl_internal::NotAfter(cert.get());
    if (!t) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca ", files.ca, ": unreadable notAfter"));
    }
    out.ca = std::min(out.ca, *t);
  }
  if (out.ca == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-ca ", files.ca, ": no PEM certificate"));
  }
  return out;
}

TlsContext::TlsContext(TlsFiles files,
                       std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider)
    : files_(std::move(files)), provider_(std::move(provider)) {}

TlsContext::~TlsContext() = default;

std::shared_ptr<const TlsContext> TlsContext::Insecure() {
  return std::shared_ptr<const TlsContext>(new TlsContext(TlsFiles{}, nullptr));
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(const TlsFiles& files) {
  if (absl::Status st = ValidateTlsFiles(files); !st.ok()) return st;
  if (!files.enabled()) return Insecure();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca,
      static_cast<unsigned>(absl::ToInt64Seconds(kTlsRefreshInterval)));
  return std::shared_ptr<const TlsContext>(new TlsContext(files, std::move(provider)));
}

std::shared_ptr<grpc::ServerCredentials> TlsContext::ServerCredentials(
    bool require_client_certificate) const {
  if (!enabled()) return grpc::InsecureServerCredentials();
  grpc::experimental::TlsServerCredentialsOptions options(provider_);
  options.watch_identity_key_cert_pairs();
  if (require_client_certificate) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> TlsContext::MemberChannelCredentials(
    const std::vector<MemberRole>& roles) const {
  if (!enabled()) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  // The role check replaces the host-name check (see the file comment).
  options.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<RoleVerifier>(roles));
  options.set_check_call_host(false);
  return grpc::experimental::TlsCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> PublicChannelCredentials(
    const std::string& ca_file) {
  if (ca_file.empty()) return grpc::InsecureChannelCredentials();
  absl::StatusOr<std::string> ca = ReadSmallFile(ca_file, "--tls-ca");
  if (!ca.ok()) return ca.status();
  if (FirstCertificate(*ca) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-ca ", ca_file, ": no PEM certificate"));
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = *std::move(ca);
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::optional<MemberIdentity>> CallerIdentity(const grpc::ServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return std::optional<MemberIdentity>();
  std::string transport;
  for (const grpc::string_ref& v :
       auth->FindPropertyValues(GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME)) {
    transport.assign(v.data(), v.size());
  }
  // Plaintext: an insecure cluster, no identity to check. Anything else
  // (TLS, with or without a client certificate) must name a member.
  if (transport.empty() || transport == "insecure") return std::optional<MemberIdentity>();
  std::vector<std::string> uris;
  for (const grpc::string_ref& v : auth->FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME)) {
    uris.emplace_back(v.data(), v.size());
  }
  absl::StatusOr<MemberIdentity> id = IdentityOfUris(uris);
  if (!id.ok()) return id.status();
  return std::optional<MemberIdentity>(*id);
}

absl::Status CheckCallerRole(const grpc::ServerContext& context,
                             const std::vector<MemberRole>& roles, absl::string_view rpc) {
  absl::StatusOr<std::optional<MemberIdentity>> caller = CallerIdentity(context);
  if (!caller.ok()) return caller.status();
  if (!caller->has_value()) return absl::OkStatus();  // plaintext: an insecure cluster
  for (MemberRole r : roles) {
    if ((*caller)->role == r) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat(MemberIdentityUri(**caller), " may not call ", rpc));
}

namespace {

std::atomic<int64_t> handshake_no_client_certificate{0};
std::atomic<int64_t> handshake_certificate_not_trusted{0};
std::atomic<int64_t> handshake_not_tls{0};
std::atomic<int64_t> handshake_other{0};

void LogFromGrpc(gpr_log_func_args* args) {
  const char* message = args->message != nullptr ? args->message : "";
  CountTlsHandshakeFailure(message);
  switch (args->severity) {
    case GPR_LOG_SEVERITY_DEBUG:
      spdlog::debug("grpc: {}", message);
      break;
    case GPR_LOG_SEVERITY_INFO:
      spdlog::info("grpc: {}", message);
      break;
    case GPR_LOG_SEVERITY_ERROR:
      spdlog::warn("grpc: {}", message);
      break;
  }
}

}  // namespace

TlsHandshakeFailures TlsHandshakeFailureCounts() {
  TlsHandshakeFailures f;
  f.no_client_certificate = handshake_no_client_certificate.load();
  f.certificate_not_trusted = handshake_certificate_not_trusted.load();
  f.not_tls = handshake_not_tls.load();
  f.other = handshake_other.load();
  return f;
}

bool CountTlsHandshakeFailure(absl::string_view message) {
  // gRPC 1.51 ssl_transport_security.cc: "Handshake failed with fatal error
  // SSL_ERROR_SSL: error:...:<OpenSSL reason>."
  if (!absl::StartsWith(message, "Handshake failed with fatal error")) return false;
  if (absl::StrContains(message, "peer did not return a certificate")) {
    handshake_no_client_certificate.fetch_add(1);
  } else if (absl::StrContains(message, "certificate verify failed") ||
             absl::StrContains(message, "certificate expired") ||
             absl::StrContains(message, "unknown ca") ||
             absl::StrContains(message, "bad certificate")) {
    handshake_certificate_not_trusted.fetch_add(1);
  } else if (absl::StrContains(message, "wrong version number") ||
             absl::StrContains(message, "http request") ||
             absl::StrContains(message, "unknown protocol") ||
             absl::StrContains(message, "packet length too long")) {
    handshake_not_tls.fetch_add(1);
  } else {
    handshake_other.fetch_add(1);
  }
  return true;
}

void RouteGrpcLogs() { gpr_set_log_function(&LogFromGrpc); }

void ExportTlsMetrics(std::shared_ptr<const TlsContext> tls,
                             metrics::MetricsServer& server) {
  if (tls == nullptr || !tls->enabled()) return;
  auto m = std::make_shared<metrics::TlsMetrics>(server.registry());
  prometheus::Gauge& cert = m->certificate_expiry.Add({{"file", "cert"}});
  prometheus::Gauge& ca = m->certificate_expiry.Add({{"file", "ca"}});
  server.OnScrape([tls = std::move(tls), m, &cert, &ca] {
    const TlsHandshakeFailures f = TlsHandshakeFailureCounts();
    for (const auto& [reason, count] :
         {std::pair{"no_client_certificate", f.no_client_certificate},
          std::pair{"certificate_not_trusted", f.certificate_not_trusted},
          std::pair{"not_tls", f.not_tls}, std::pair{"other", f.other}}) {
      metrics::SetCounterTotal(m->handshake_failures.Add({{"reason", reason}}),
                               static_cast<double>(count));
    }
    absl::StatusOr<CertificateExpiry> e = ReadCertificateExpiry(tls->files());
    if (!e.ok()) {
      spdlog::warn("certificate expiry not refreshed: {}", std::string(e.status().message()));
      return;
    }
    cert.Set(absl::ToDoubleSeconds(e->cert - absl::UnixEpoch()));
    ca.Set(absl::ToDoubleSeconds(e->ca - absl::UnixEpoch()));
  });
}

absl::Status CoordinatorOnly(const grpc::ServerContext& context, absl::string_view rpc) {
  absl::Status st = CheckCallerRole(context, {MemberRole::kCoordinator}, rpc);
  if (!st.ok()) spdlog::warn("{} refused: {}", std::string(rpc), std::string(st.message()));
  return st;
}

}  // namespace dsv2::service
