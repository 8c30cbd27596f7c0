#include "service/certificates.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "service/openssl_internal.h"
#include "service/tls.h"

namespace dsv2::service {

namespace openssl_internal {

std::vector<X509Ptr> PemCertificates(absl::string_view pem) {
  std::vector<X509Ptr> out;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (bio != nullptr) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    out.push_back(std::move(cert));
  }
  ERR_clear_error();  // the read that ended the loop failed on purpose
  return out;
}

std::optional<absl::Time> NotAfter(const X509* cert) {
  struct tm t;
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &t) != 1) return std::nullopt;
  return absl::FromTimeT(timegm(&t));
}

}  // namespace openssl_internal

namespace {

using openssl_internal::BioPtr;
using openssl_internal::Deleter;
using openssl_internal::EvpKey;
using openssl_internal::X509Ptr;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;

// The last OpenSSL error as text ("" when none), clearing the queue.
std::string OpenSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

absl::Status Failed(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", OpenSslError()));
}

absl::StatusOr<EvpKey> NewKey() {
  EvpKey key(EVP_EC_gen("P-256"));
  if (key == nullptr) return Failed("cannot make an EC key");
  return key;
}

absl::StatusOr<std::string> ToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert) != 1) return Failed("PEM of a cert");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<std::string> ToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Failed("PEM of a key");
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Adds extension `nid` = `value` (OpenSSL's config syntax) to `cert`.
absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (ext == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("bad certificate extension ", OBJ_nid2sn(nid),
                                                   " = ", value, ": ", OpenSslError()));
  }
  if (X509_add_ext(cert, ext.get(), -1) != 1) return Failed("cannot add an extension");
  return absl::OkStatus();
}

// A certificate for `key`, named `common_name`, valid [not_before,
// not_after], issued by `issuer` (null: self-signed) and not yet signed.
absl::StatusOr<X509Ptr> NewCertificate(EVP_PKEY* key, absl::string_view common_name,
                                       absl::Time not_before, absl::Time not_after, X509* issuer) {
  if (common_name.empty() || common_name.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a certificate's common name must have 1 to 64 characters, not ", common_name.size()));
  }
  if (not_after <= not_before) {
    return absl::InvalidArgumentError("a certificate's notAfter must follow its notBefore");
  }
  X509Ptr cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return Failed("cannot make a certificate");
  }
  // A random positive 127-bit serial (RFC 5280: at most 20 octets, unique per issuer).
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return Failed("no random serial");
  serial[0] &= 0x7f;
  std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>> bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return Failed("cannot set the serial");
  }
  if (ASN1_TIME_set(X509_getm_notBefore(cert.get()), absl::ToTimeT(not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert.get()), absl::ToTimeT(not_after)) == nullptr) {
    return Failed("cannot set the validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  const std::string cn(common_name);
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("dsv2"), -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1) {
    return Failed("cannot set the subject");
  }
  X509* signer = issuer != nullptr ? issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) != 1 ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return Failed("cannot set the issuer or the public key");
  }
  return cert;
}

}  // namespace

struct CertificateAuthority::Keys {
  EvpKey key;
  X509Ptr cert;
};

CertificateAuthority::CertificateAuthority(std::unique_ptr<Keys> keys, PemCertificate pem)
    : keys_(std::move(keys)), pem_(std::move(pem)) {}
CertificateAuthority::CertificateAuthority(CertificateAuthority&&) noexcept = default;
CertificateAuthority& CertificateAuthority::operator=(CertificateAuthority&&) noexcept = default;
CertificateAuthority::~CertificateAuthority() = default;

absl::StatusOr<CertificateAuthority> CertificateAuthority::Create(absl::string_view common_name,
                                                                  absl::Time not_before,
                                                                  absl::Time not_after) {
  auto keys = std::make_unique<Keys>();
  absl::StatusOr<EvpKey> key = NewKey();
  if (!key.ok()) return key.status();
  keys->key = *std::move(key);
  absl::StatusOr<X509Ptr> cert =
      NewCertificate(keys->key.get(), common_name, not_before, not_after, nullptr);
  if (!cert.ok()) return cert.status();
  keys->cert = *std::move(cert);
  X509* c = keys->cert.get();
  for (const auto& [nid, value] :
       {std::pair<int, std::string>{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
        {NID_key_usage, "critical,keyCertSign,cRLSign"},
        {NID_subject_key_identifier, "hash"}}) {
    if (absl::Status st = AddExtension(c, c, nid, value); !st.ok()) return st;
  }
  if (X509_sign(c, keys->key.get(), EVP_sha256()) == 0) return Failed("cannot sign");
  PemCertificate pem;
  absl::StatusOr<std::string> cert_pem = ToPem(c);
  absl::StatusOr<std::string> key_pem = ToPem(keys->key.get());
  if (!cert_pem.ok()) return cert_pem.status();
  if (!key_pem.ok()) return key_pem.status();
  pem.cert = *std::move(cert_pem);
  pem.key = *std::move(key_pem);
  return CertificateAuthority(std::move(keys), std::move(pem));
}

absl::StatusOr<PemCertificate> CertificateAuthority::Issue(
    const CertificateRequest& request) const {
  absl::StatusOr<EvpKey> key = NewKey();
  if (!key.ok()) return key.status();
  absl::StatusOr<X509Ptr> cert = NewCertificate(key->get(), request.common_name, request.not_before,
                                                request.not_after, keys_->cert.get());
  if (!cert.ok()) return cert.status();
  X509* c = cert->get();
  std::vector<std::string> names;
  // The config syntax separates with commas: a value holding one would
  // smuggle in another name (and a NUL would cut it short).
  auto bad = [](const std::string& s) {
    return s.empty() || s.find_first_of(std::string_view(",\n\r\0", 4)) != std::string::npos;
  };
  if (!request.identity_uri.empty()) {
    if (bad(request.identity_uri)) return absl::InvalidArgumentError("bad identity URI");
    names.push_back("URI:" + request.identity_uri);
  }
  for (const std::string& d : request.dns_names) {
    if (bad(d)) return absl::InvalidArgumentError(absl::StrCat("bad DNS name '", d, "'"));
    names.push_back("DNS:" + d);
  }
  for (const std::string& ip : request.ip_addresses) {
    if (bad(ip)) return absl::InvalidArgumentError(absl::StrCat("bad IP address '", ip, "'"));
    names.push_back("IP:" + ip);
  }
  std::vector<std::pair<int, std::string>> extensions = {
      {NID_basic_constraints, "critical,CA:FALSE"},   {NID_key_usage, "critical,digitalSignature"},
      {NID_ext_key_usage, "serverAuth,clientAuth"},   {NID_subject_key_identifier, "hash"},
      {NID_authority_key_identifier, "keyid:always"},
  };
  if (!names.empty()) extensions.emplace_back(NID_subject_alt_name, absl::StrJoin(names, ","));
  for (const auto& [nid, value] : extensions) {
    if (absl::Status st = AddExtension(c, keys_->cert.get(), nid, value); !st.ok()) return st;
  }
  if (X509_sign(c, keys_->key.get(), EVP_sha256()) == 0) return Failed("cannot sign");
  PemCertificate pem;
  absl::StatusOr<std::string> cert_pem = ToPem(c);
  absl::StatusOr<std::string> key_pem = ToPem(key->get());
  if (!cert_pem.ok()) return cert_pem.status();
  if (!key_pem.ok()) return key_pem.status();
  pem.cert = *std::move(cert_pem);
  pem.key = *std::move(key_pem);
  return pem;
}

namespace {

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents, mode_t mode) {
  // A fresh file of our own (mkstemp: O_EXCL, never a planted file or
  // symlink), given `mode` before a byte is written.
  std::string tmp = absl::StrCat(path, ".tmp.XXXXXX");
  const int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  if (fchmod(fd, mode) != 0) {
    const int e = errno;
    close(fd);
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot chmod ", tmp, ": ", strerror(e)));
  }
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      close(fd);
      unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(e)));
    }
    done += static_cast<size_t>(n);
  }
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", strerror(e)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteCertificateFiles(const std::string& dir, absl::string_view name,
                                   const PemCertificate& pem) {
  if (absl::Status st = WriteFileAtomically(absl::StrCat(dir, "/", name, ".key"), pem.key, 0600);
      !st.ok()) {
    return st;
  }
  return WriteFileAtomically(absl::StrCat(dir, "/", name, ".crt"), pem.cert, 0644);
}

absl::Status WriteLoopbackMemberCertificate(const CertificateAuthority& ca, const std::string& dir,
                                            absl::string_view name) {
  MemberIdentity identity;
  absl::string_view rest = name;
  if (name == "coordinator") {
    identity.role = MemberRole::kCoordinator;
  } else if (absl::ConsumePrefix(&rest, "expert-") && !rest.empty()) {
    identity = {MemberRole::kExpert, std::string(rest)};
  } else if (absl::StartsWith(name, "attention-")) {
    identity = {MemberRole::kAttention, std::string(name)};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' is no process of a loopback cluster"));
  }
  CertificateRequest req;
  req.common_name = std::string(name);
  req.identity_uri = MemberIdentityUri(identity);
  if (absl::Status st = ParseMemberIdentityUri(req.identity_uri).status(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "': ", st.message()));
  }
  req.dns_names = {"localhost"};
  req.ip_addresses = {"127.0.0.1"};
  absl::StatusOr<PemCertificate> pem = ca.Issue(req);
  if (!pem.ok()) return pem.status();
  return WriteCertificateFiles(dir, name, *pem);
}

absl::StatusOr<absl::Time> CertificateNotAfter(absl::string_view pem) {
  std::vector<X509Ptr> certs = openssl_internal::PemCertificates(pem);
  if (certs.empty()) return absl::InvalidArgumentError("no PEM certificate");
  std::optional<absl::Time> t = openssl_internal::NotAfter(certs.front().get());
  if (!t) return absl::InvalidArgumentError("unreadable notAfter");
  return *t;
}

}  // namespace dsv2::service
