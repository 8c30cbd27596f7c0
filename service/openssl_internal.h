// OpenSSL ownership types and PEM helpers shared by service/certificates.cc
// and service/tls.cc; private to service/ (and its tests).
#ifndef DSV2_SERVICE_OPENSSL_INTERNAL_H_
#define DSV2_SERVICE_OPENSSL_INTERNAL_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dsv2::service::openssl_internal {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using EvpKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;

// Every certificate of a PEM text, in order (none when it holds none); the
// OpenSSL error queue is left empty.
std::vector<X509Ptr> PemCertificates(absl::string_view pem);

// A certificate's notAfter; nullopt when it cannot be read.
std::optional<absl::Time> NotAfter(const X509* cert);

}  // namespace dsv2::service::openssl_internal

#endif  // DSV2_SERVICE_OPENSSL_INTERNAL_H_
