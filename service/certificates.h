// Certificates for a dsv2 cluster's mutual TLS, made with OpenSSL: a
// certificate authority and the certificates it issues (service/tls.h says
// how they are used and what identity a certificate carries).
//
// `dsv2 up` makes a throw-away authority and one certificate per process in a
// temporary directory; tests make them to exercise the handshakes (wrong
// authority, expired certificate, another member's identity). A production
// cluster gets its certificates from its own authority (cert-manager in the
// Kubernetes overlay).
//
// Keys are ECDSA P-256; certificates are X.509 v3 signed with SHA-256. An
// issued certificate carries the identity URI and the DNS names and IP
// addresses it is valid for as subjectAltNames, extendedKeyUsage serverAuth
// and clientAuth (every member is both a client and a server), and the
// authority's key identifier.
//
// Thread-safety: a CertificateAuthority is immutable after Create; Issue may
// be called from any thread.
#ifndef DSV2_SERVICE_CERTIFICATES_H_
#define DSV2_SERVICE_CERTIFICATES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dsv2::service {

// A certificate and its private key, PEM-encoded (the key as PKCS#8).
struct PemCertificate {
  std::string cert;
  std::string key;
};

struct CertificateRequest {
  std::string common_name;                // the subject's CN (informational)
  std::string identity_uri;               // URI SAN, e.g. "spiffe://dsv2/expert/3"; may be empty
  std::vector<std::string> dns_names;     // DNS SANs, e.g. "localhost"
  std::vector<std::string> ip_addresses;  // IP SANs, e.g. "127.0.0.1"
  absl::Time not_before = absl::Now() - absl::Minutes(5);
  absl::Time not_after = absl::Now() + absl::Hours(24 * 30);
};

class CertificateAuthority {
 public:
  // A new self-signed authority (a fresh key) named `common_name`.
  static absl::StatusOr<CertificateAuthority> Create(
      absl::string_view common_name, absl::Time not_before = absl::Now() - absl::Minutes(5),
      absl::Time not_after = absl::Now() + absl::Hours(24 * 365));

  CertificateAuthority(CertificateAuthority&&) noexcept;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept;
  ~CertificateAuthority();

  // The authority's own certificate and key.
  const PemCertificate& pem() const { return pem_; }

  // A certificate for `request`, signed by this authority, with a fresh key.
  // InvalidArgument for a malformed name, URI or IP address.
  absl::StatusOr<PemCertificate> Issue(const CertificateRequest& request) const;

 private:
  struct Keys;
  CertificateAuthority(std::unique_ptr<Keys> keys, PemCertificate pem);
  std::unique_ptr<Keys> keys_;
  PemCertificate pem_;
};

// Writes `pem` as DIR/NAME.crt and DIR/NAME.key (the key readable by the
// owner only), replacing existing files atomically (write, then rename), so
// a process watching them never reads half a file.
absl::Status WriteCertificateFiles(const std::string& dir, absl::string_view name,
                                   const PemCertificate& pem);

// The certificate of process `name` of a cluster on loopback, as `dsv2 up`
// and the tests make them: "coordinator", "expert-<shard id>" or
// "attention-<name>", issued by `ca` for that process's member identity
// (service/tls.h: spiffe://dsv2/coordinator, .../expert/<shard id>,
// .../attention/attention-<name>), valid for localhost and 127.0.0.1, and
// written as DIR/NAME.crt and DIR/NAME.key. InvalidArgument for another name.
absl::Status WriteLoopbackMemberCertificate(const CertificateAuthority& ca, const std::string& dir,
                                            absl::string_view name);

// The notAfter time of the first certificate in `pem`; InvalidArgument when
// `pem` holds none.
absl::StatusOr<absl::Time> CertificateNotAfter(absl::string_view pem);

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_CERTIFICATES_H_
