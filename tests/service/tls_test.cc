// service/tls.h and service/certificates.h: member identities, the TLS
// files' validation, the certificates the authority issues, and real
// handshakes between a gRPC server and clients (mutual TLS, identities,
// roles) in one process.
#include "service/tls.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator.grpc.pb.h"
#include "gtest/gtest.h"
#include "service/certificates.h"
#include "service/service_common.h"
#include "tests/common/raw_tls_credentials.h"

namespace dsv2::service {
namespace {

namespace fs = std::filesystem;

TEST(MemberIdentityTest, UrisRoundTripAndAnythingElseIsRefused) {
  for (const MemberIdentity& id :
       {MemberIdentity{MemberRole::kCoordinator, ""}, MemberIdentity{MemberRole::kAttention, ""},
        MemberIdentity{MemberRole::kAttention, "attention-0"},
        MemberIdentity{MemberRole::kExpert, "17"},
        MemberIdentity{MemberRole::kExpert, "a.b_c-D"}}) {
    const std::string uri = MemberIdentityUri(id);
    EXPECT_TRUE(absl::StartsWith(uri, "spiffe://dsv2/")) << uri;
    absl::StatusOr<MemberIdentity> back = ParseMemberIdentityUri(uri);
    ASSERT_TRUE(back.ok()) << uri << ": " << back.status();
    EXPECT_EQ(*back, id) << uri;
  }
  EXPECT_EQ(MemberIdentityUri({MemberRole::kExpert, "3"}), "spiffe://dsv2/expert/3");
  for (const char* bad :
       {"", "spiffe://dsv2/", "spiffe://dsv2/admin", "spiffe://other/expert/1",
        "https://dsv2/expert", "spiffe://dsv2/expert/", "spiffe://dsv2/expert/1/2",
        "spiffe://dsv2/expert/a b", "spiffe://dsv2/attention/a,b", "spiffe://DSV2/expert",
        "spiffe://dsv2/Expert/1",
        "spiffe://dsv2/expert/0123456789012345678901234567890123456789012345678901234567890123X"}) {
    EXPECT_FALSE(ParseMemberIdentityUri(bad).ok()) << bad;
  }
}

TEST(MemberIdentityTest, ExpertIdsBindTheShardIdTheyEndIn) {
  EXPECT_EQ(ExpertShardIdOf("3"), 3);
  EXPECT_EQ(ExpertShardIdOf("0"), 0);
  EXPECT_EQ(ExpertShardIdOf("dsv2-expert-3"), 3);  // a StatefulSet pod name
  EXPECT_EQ(ExpertShardIdOf("dsv2-expert-17"), 17);
  EXPECT_EQ(ExpertShardIdOf("a-b-0"), 0);
  EXPECT_EQ(ExpertShardIdOf("-12"), 12);
  EXPECT_EQ(ExpertShardIdOf("2147483647"), 2147483647);
  // Names that bind no shard: no digits, not canonical, out of range.
  for (const char* none : {"", "expert", "dsv2-expert", "dsv2-expert-", "x-03", "03", "3a",
                           "dsv2-expert-3.1", "dsv2-expert-+3", "2147483648", "x-99999999999"}) {
    EXPECT_EQ(ExpertShardIdOf(none), std::nullopt) << none;
  }
}

class TlsFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/tls_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    absl::StatusOr<CertificateAuthority> ca = CertificateAuthority::Create("test authority");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = std::make_unique<CertificateAuthority>(*std::move(ca));
    std::ofstream(dir_ + "/ca.crt") << ca_->pem().cert;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Issues `uri`'s certificate as DIR/NAME.crt/.key; returns the files.
  TlsFiles Issue(const std::string& name, const std::string& uri,
                 absl::Time not_after = absl::Now() + absl::Hours(24)) {
    CertificateRequest req;
    req.common_name = name;
    req.identity_uri = uri;
    req.dns_names = {"localhost"};
    req.ip_addresses = {"127.0.0.1"};
    req.not_before = std::min(absl::Now() - absl::Minutes(5), not_after - absl::Hours(1));
    req.not_after = not_after;
    absl::StatusOr<PemCertificate> pem = ca_->Issue(req);
    EXPECT_TRUE(pem.ok()) << pem.status();
    EXPECT_TRUE(WriteCertificateFiles(dir_, name, *pem).ok());
    return TlsFiles{absl::StrCat(dir_, "/", name, ".crt"), absl::StrCat(dir_, "/", name, ".key"),
                    dir_ + "/ca.crt"};
  }

  std::string dir_;
  std::unique_ptr<CertificateAuthority> ca_;
};

TEST_F(TlsFilesTest, ValidationNamesTheFlagOfWhatIsWrong) {
  EXPECT_TRUE(ValidateTlsFiles(TlsFiles{}).ok());
  const TlsFiles good = Issue("member", "spiffe://dsv2/expert/1");
  EXPECT_TRUE(ValidateTlsFiles(good).ok());
  EXPECT_TRUE(good.enabled());
  // Some but not all.
  for (TlsFiles partial : {TlsFiles{good.cert, "", ""}, TlsFiles{"", good.key, good.ca},
                           TlsFiles{good.cert, good.key, ""}}) {
    absl::Status st = ValidateTlsFiles(partial);
    EXPECT_TRUE(absl::IsInvalidArgument(st));
    EXPECT_TRUE(absl::StrContains(st.message(), "go together")) << st;
  }
  const auto expect_names = [](const TlsFiles& f, const std::string& flag) {
    absl::Status st = ValidateTlsFiles(f);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), flag)) << st;
  };
  expect_names({dir_ + "/missing.crt", good.key, good.ca}, "--tls-cert");
  expect_names({good.cert, dir_ + "/missing.key", good.ca}, "--tls-key");
  expect_names({good.cert, good.key, dir_ + "/missing.crt"}, "--tls-ca");
  std::ofstream(dir_ + "/garbage") << "-----BEGIN CERTIFICATE-----\nnot base64\n";
  expect_names({dir_ + "/garbage", good.key, good.ca}, "--tls-cert");
  expect_names({good.cert, dir_ + "/garbage", good.ca}, "--tls-key");
  expect_names({good.cert, good.key, dir_ + "/garbage"}, "--tls-ca");
  // Another certificate's key.
  const TlsFiles other = Issue("other", "spiffe://dsv2/expert/2");
  expect_names({good.cert, other.key, good.ca}, "is not the key of");
  // A certificate the cluster would refuse: expired, or of another authority.
  const TlsFiles expired = Issue("expired", "spiffe://dsv2/expert/2", absl::Now() - absl::Hours(1));
  expect_names(expired, "certificate has expired");
  absl::StatusOr<CertificateAuthority> another = CertificateAuthority::Create("another");
  ASSERT_TRUE(another.ok());
  std::ofstream(dir_ + "/another-ca.crt") << another->pem().cert;
  expect_names({good.cert, good.key, dir_ + "/another-ca.crt"}, "does not verify against --tls-ca");
  // A bundle holding the right authority is fine.
  std::ofstream(dir_ + "/bundle.crt") << another->pem().cert << ca_->pem().cert;
  EXPECT_TRUE(ValidateTlsFiles({good.cert, good.key, dir_ + "/bundle.crt"}).ok());
  // Keys are written for the owner only.
  struct stat st;
  ASSERT_EQ(stat(good.key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(TlsFilesTest, ExpiryIsReadFromTheFiles) {
  const absl::Time not_after = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) + 86400 * 3);
  const TlsFiles f = Issue("member", "spiffe://dsv2/attention/a", not_after);
  absl::StatusOr<CertificateExpiry> e = ReadCertificateExpiry(f);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->cert, not_after);
  EXPECT_GT(e->ca, not_after);  // the authority: a year
  EXPECT_FALSE(CertificateNotAfter("no certificate").ok());
}

// The loopback cluster's certificates (dsv2 up, the cluster tests): each
// process named by its identity, usable as a member's files.
TEST_F(TlsFilesTest, LoopbackMemberCertificatesNameTheProcesssIdentity) {
  for (const auto& [name, uri] :
       {std::pair<std::string, std::string>{"coordinator", "spiffe://dsv2/coordinator"},
        {"expert-7", "spiffe://dsv2/expert/7"},
        {"attention-0", "spiffe://dsv2/attention/attention-0"}}) {
    ASSERT_TRUE(WriteLoopbackMemberCertificate(*ca_, dir_, name).ok()) << name;
    const TlsFiles f{absl::StrCat(dir_, "/", name, ".crt"), absl::StrCat(dir_, "/", name, ".key"),
                     dir_ + "/ca.crt"};
    EXPECT_TRUE(ValidateTlsFiles(f).ok()) << name;
    std::ifstream in(f.cert);
    std::stringstream pem;
    pem << in.rdbuf();
    EXPECT_TRUE(pem.str().find("BEGIN CERTIFICATE") != std::string::npos);
  }
  for (const char* bad : {"shard-1", "expert-", "expert-a b", "coordinator-2", ""}) {
    EXPECT_TRUE(absl::IsInvalidArgument(WriteLoopbackMemberCertificate(*ca_, dir_, bad))) << bad;
  }
}

TEST_F(TlsFilesTest, IssueRefusesNamesThatWouldSmuggleAnotherName) {
  CertificateRequest req;
  req.common_name = "x";
  req.identity_uri = "spiffe://dsv2/expert/1,URI:spiffe://dsv2/coordinator";
  EXPECT_TRUE(absl::IsInvalidArgument(ca_->Issue(req).status()));
  req.identity_uri = "spiffe://dsv2/expert/1";
  req.dns_names = {"a,DNS:b"};
  EXPECT_TRUE(absl::IsInvalidArgument(ca_->Issue(req).status()));
  req.dns_names = {};
  req.ip_addresses = {"not an ip"};
  EXPECT_FALSE(ca_->Issue(req).ok());
  req.ip_addresses = {};
  req.not_after = req.not_before;
  EXPECT_TRUE(absl::IsInvalidArgument(ca_->Issue(req).status()));
  req.not_after = req.not_before + absl::Hours(1);
  req.common_name = "";
  EXPECT_TRUE(absl::IsInvalidArgument(ca_->Issue(req).status()));
}

// A membership service that answers Register with the caller's identity
// (node_id 1 for attention, 2 for expert, 3 for the coordinator; a
// plaintext caller 0) and Leave only for the coordinator role.
class IdentityEcho final : public internal::Coordinator::Service {
 public:
  grpc::Status Register(grpc::ServerContext* ctx, const internal::RegisterRequest*,
                        internal::RegisterResponse* out) override {
    absl::StatusOr<std::optional<MemberIdentity>> who = CallerIdentity(*ctx);
    if (!who.ok()) return ToGrpcStatus(who.status());
    if (!who->has_value()) {
      out->set_node_id(0);
    } else {
      out->set_node_id(1 + static_cast<int>((*who)->role == MemberRole::kExpert) +
                       2 * static_cast<int>((*who)->role == MemberRole::kCoordinator));
    }
    return grpc::Status::OK;
  }
  grpc::Status Leave(grpc::ServerContext* ctx, const internal::LeaveRequest*,
                     internal::LeaveResponse*) override {
    return ToGrpcStatus(CoordinatorOnly(*ctx, "Leave"));
  }
};

class HandshakeTest : public TlsFilesTest {
 protected:
  // Serves IdentityEcho with `server` credentials; returns the address.
  std::string Serve(const TlsFiles& files, bool require_client_certificate) {
    absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsContext::Create(files);
    EXPECT_TRUE(tls.ok()) << tls.status();
    server_tls_ = *tls;
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", server_tls_->ServerCredentials(require_client_certificate),
                       &port);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    return absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    TlsFilesTest::TearDown();
  }
  // Register through `creds`: the node id the echo answers, or the status.
  absl::StatusOr<uint64_t> Call(const std::string& address,
                                std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto stub = internal::Coordinator::NewStub(grpc::CreateChannel(address, creds));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    internal::RegisterResponse resp;
    const grpc::Status st = stub->Register(&ctx, internal::RegisterRequest(), &resp);
    if (!st.ok()) return FromGrpcStatus(st);
    return resp.node_id();
  }
  std::shared_ptr<grpc::ChannelCredentials> Member(const TlsFiles& files,
                                                   std::vector<MemberRole> roles) {
    absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsContext::Create(files);
    EXPECT_TRUE(tls.ok()) << tls.status();
    return (*tls)->MemberChannelCredentials(roles);
  }

  IdentityEcho service_;
  std::shared_ptr<const TlsContext> server_tls_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(HandshakeTest, MutualTlsAdmitsOnlyTheAuthoritysUnexpiredCertificates) {
  RouteGrpcLogs();  // as every service binary does: failed handshakes are counted
  const TlsHandshakeFailures before = TlsHandshakeFailureCounts();
  const std::string address =
      Serve(Issue("coordinator", "spiffe://dsv2/coordinator"), /*require_client_certificate=*/true);
  // The authority's members, each seen as itself.
  absl::StatusOr<uint64_t> r =
      Call(address, Member(Issue("a", "spiffe://dsv2/attention/a"), {MemberRole::kCoordinator}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 1u);
  r = Call(address, Member(Issue("e", "spiffe://dsv2/expert/4"), {MemberRole::kCoordinator}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 2u);
  // Refused at the handshake: no certificate, plaintext, expired, another
  // authority's (its certificate and key are valid, its CA file the
  // cluster's, so only the server's check refuses it).
  EXPECT_TRUE(
      absl::IsUnavailable(Call(address, *PublicChannelCredentials(dir_ + "/ca.crt")).status()));
  EXPECT_TRUE(absl::IsUnavailable(Call(address, grpc::InsecureChannelCredentials()).status()));
  const TlsFiles expired = Issue("old", "spiffe://dsv2/expert/4", absl::Now() - absl::Hours(1));
  EXPECT_TRUE(absl::IsUnavailable(
      Call(address, testing_util::RawTlsCredentials(expired.cert, expired.key, expired.ca))
          .status()));
  absl::StatusOr<CertificateAuthority> other = CertificateAuthority::Create("other authority");
  ASSERT_TRUE(other.ok());
  CertificateRequest req;
  req.common_name = "foreign";
  req.identity_uri = "spiffe://dsv2/expert/4";
  absl::StatusOr<PemCertificate> foreign = other->Issue(req);
  ASSERT_TRUE(foreign.ok());
  ASSERT_TRUE(WriteCertificateFiles(dir_, "foreign", *foreign).ok());
  EXPECT_TRUE(absl::IsUnavailable(
      Call(address, testing_util::RawTlsCredentials(dir_ + "/foreign.crt", dir_ + "/foreign.key",
                                                    dir_ + "/ca.crt"))
          .status()));
  // The client checks the server's role: a coordinator is not an expert.
  EXPECT_TRUE(absl::IsUnavailable(
      Call(address, Member(Issue("a2", "spiffe://dsv2/attention/a2"), {MemberRole::kExpert}))
          .status()));
  // Each refused handshake was counted by its reason (in this process both
  // ends count theirs: at least the server's).
  const TlsHandshakeFailures after = TlsHandshakeFailureCounts();
  EXPECT_GE(after.no_client_certificate - before.no_client_certificate, 1);
  EXPECT_GE(after.not_tls - before.not_tls, 1);
  EXPECT_GE(after.certificate_not_trusted - before.certificate_not_trusted, 2);
}

TEST(TlsHandshakeFailuresTest, GrpcsReportsAreClassifiedAndOtherLinesIgnored) {
  const TlsHandshakeFailures before = TlsHandshakeFailureCounts();
  EXPECT_FALSE(CountTlsHandshakeFailure("Security handshake failed: {\"created\":...}"));
  EXPECT_FALSE(CountTlsHandshakeFailure("some other gRPC line"));
  EXPECT_TRUE(CountTlsHandshakeFailure(
      "Handshake failed with fatal error SSL_ERROR_SSL: error:0A0000C7:SSL "
      "routines::peer did not return a certificate."));
  EXPECT_TRUE(CountTlsHandshakeFailure(
      "Handshake failed with fatal error SSL_ERROR_SSL: error:0A000086:SSL "
      "routines::certificate verify failed."));
  EXPECT_TRUE(CountTlsHandshakeFailure(
      "Handshake failed with fatal error SSL_ERROR_SSL: error:0A00010B:SSL routines::wrong "
      "version number."));
  EXPECT_TRUE(CountTlsHandshakeFailure(
      "Handshake failed with fatal error SSL_ERROR_SYSCALL: Connection reset."));
  const TlsHandshakeFailures after = TlsHandshakeFailureCounts();
  EXPECT_EQ(after.no_client_certificate - before.no_client_certificate, 1);
  EXPECT_EQ(after.certificate_not_trusted - before.certificate_not_trusted, 1);
  EXPECT_EQ(after.not_tls - before.not_tls, 1);
  EXPECT_EQ(after.other - before.other, 1);
}

TEST_F(HandshakeTest, OnlyTheCoordinatorRoleMayCallCoordinatorOnlyRpcs) {
  const std::string address =
      Serve(Issue("node", "spiffe://dsv2/attention/n"), /*require_client_certificate=*/true);
  const auto leave = [&](const TlsFiles& files) {
    auto stub = internal::Coordinator::NewStub(
        grpc::CreateChannel(address, Member(files, {MemberRole::kAttention})));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    internal::LeaveResponse resp;
    return stub->Leave(&ctx, internal::LeaveRequest(), &resp);
  };
  EXPECT_TRUE(leave(Issue("coordinator", "spiffe://dsv2/coordinator")).ok());
  EXPECT_EQ(leave(Issue("e", "spiffe://dsv2/expert/1")).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(leave(Issue("a", "spiffe://dsv2/attention/x")).error_code(), grpc::PERMISSION_DENIED);
  // A certificate of the authority without a dsv2 identity: refused too.
  EXPECT_EQ(leave(Issue("nobody", "")).error_code(), grpc::PERMISSION_DENIED);
  // An identity counts only as a URI subjectAltName, never as a DNS name.
  CertificateRequest req;
  req.common_name = "dns";
  req.dns_names = {"spiffe://dsv2/coordinator", "localhost"};
  absl::StatusOr<PemCertificate> pem = ca_->Issue(req);
  ASSERT_TRUE(pem.ok()) << pem.status();
  ASSERT_TRUE(WriteCertificateFiles(dir_, "dns", *pem).ok());
  EXPECT_EQ(leave({dir_ + "/dns.crt", dir_ + "/dns.key", dir_ + "/ca.crt"}).error_code(),
            grpc::PERMISSION_DENIED);
}

TEST_F(HandshakeTest, PublicPortIsTlsWithoutClientCertificatesAndChecksTheHostName) {
  const std::string address = Serve(Issue("coordinator", "spiffe://dsv2/coordinator"),
                                    /*require_client_certificate=*/false);
  // A TLS caller without a client certificate is no member: the member-only
  // checks refuse it (they never fail open on a TLS port).
  absl::StatusOr<uint64_t> r = Call(address, *PublicChannelCredentials(dir_ + "/ca.crt"));
  EXPECT_TRUE(absl::IsPermissionDenied(r.status())) << r.status();
  // Another name than the certificate's: refused.
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("somewhere-else.example");
  auto stub = internal::Coordinator::NewStub(
      grpc::CreateCustomChannel(address, *PublicChannelCredentials(dir_ + "/ca.crt"), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  internal::RegisterResponse resp;
  EXPECT_EQ(stub->Register(&ctx, internal::RegisterRequest(), &resp).error_code(),
            grpc::UNAVAILABLE);
  EXPECT_FALSE(PublicChannelCredentials(dir_ + "/missing.crt").ok());
}

TEST(TlsContextTest, NoFilesMeansPlaintext) {
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsContext::Create(TlsFiles{});
  ASSERT_TRUE(tls.ok());
  EXPECT_FALSE((*tls)->enabled());
  EXPECT_FALSE(TlsContext::Insecure()->enabled());
}

}  // namespace
}  // namespace dsv2::service
