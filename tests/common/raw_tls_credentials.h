// TLS channel credentials straight from files, without service::TlsContext's
// start-up validation: how a test presents a certificate the cluster must
// refuse at the handshake (expired, of another authority). The server's
// certificate is checked against `ca` and the target host name as usual.
#ifndef DSV2_TESTS_COMMON_RAW_TLS_CREDENTIALS_H_
#define DSV2_TESTS_COMMON_RAW_TLS_CREDENTIALS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <memory>
#include <string>

namespace dsv2::testing_util {

inline std::shared_ptr<grpc::ChannelCredentials> RawTlsCredentials(const std::string& cert,
                                                                   const std::string& key,
                                                                   const std::string& ca) {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(key, cert, ca, 1));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_RAW_TLS_CREDENTIALS_H_
