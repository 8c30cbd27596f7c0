#include "service/serve.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "coordinator.pb.h"
#include "service/coordinator_link.h"
#include "service/service_common.h"
#include "service/tls.h"

namespace dsv2::service {
namespace {

std::chrono::system_clock::time_point FromNow(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// One gRPC server on host:port with `services` (and health; reflection
// when the plugin was initialized before the call); *bound is the port.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& host, int port, const std::vector<grpc::Service*>& services,
    std::shared_ptr<grpc::ServerCredentials> credentials, int* bound) {
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second process on a port in use
  // would then start "ready" and take half of the connections. Off, the
  // bind fails and the process exits 1 saying so.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Members ping their coordinator link every few seconds, calls or not
  // (CoordinatorLink: a partition leaves no reset to notice); accept that
  // rather than answer with GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  *bound = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), std::move(credentials), bound);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *bound == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", host, ":", port, " (address in use or not local)"));
  }
  return server;
}

// The process's servers: the main one, the internal one when
// options.internal_port is set, the plaintext health-only one when
// options.health_port is.
struct Servers {
  std::unique_ptr<grpc::Server> main, internal, health;
  int port = 0, internal_port = 0, health_port = 0;
  // One deadline for all: the grace is not paid twice.
  void Shutdown(absl::Duration grace) {
    const auto deadline = FromNow(grace);
    for (grpc::Server* s : {main.get(), internal.get(), health.get()}) {
      if (s != nullptr) s->Shutdown(deadline);
    }
  }
};

absl::StatusOr<Servers> StartServers(const ServeOptions& options, ServedProcess& process) {
  grpc::EnableDefaultHealthCheckService(true);
  const std::shared_ptr<const TlsContext> tls =
      options.tls != nullptr ? options.tls : TlsContext::Insecure();
  if (tls->enabled() && options.public_port && !options.internal_port &&
      !process.internal_services().empty()) {
    return absl::InvalidArgumentError(
        "with TLS the membership service needs its own mutual-TLS port: give --internal-port");
  }
  Servers servers;
  std::vector<grpc::Service*> services = process.services();
  const std::vector<grpc::Service*> internal = process.internal_services();
  // The internal and health servers come before the reflection plugin
  // exists: gRPC adds it to every server built after its initialization.
  if (options.internal_port) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> s = StartServer(
        options.host, *options.internal_port, internal,
        tls->ServerCredentials(/*require_client_certificate=*/true), &servers.internal_port);
    if (!s.ok()) return s.status();
    servers.internal = *std::move(s);
  } else {
    services.insert(services.end(), internal.begin(), internal.end());
  }
  if (options.health_port) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> s =
        StartServer(options.host, *options.health_port, {}, grpc::InsecureServerCredentials(),
                    &servers.health_port);
    if (!s.ok()) {
      servers.Shutdown(absl::ZeroDuration());
      return s.status();
    }
    servers.health = *std::move(s);
  }
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  absl::StatusOr<std::unique_ptr<grpc::Server>> s = StartServer(
      options.host, options.port, services,
      tls->ServerCredentials(/*require_client_certificate=*/!options.public_port), &servers.port);
  if (!s.ok()) {
    servers.Shutdown(absl::ZeroDuration());
    return s.status();
  }
  servers.main = *std::move(s);
  return servers;
}

std::unique_ptr<CoordinatorLink> MakeLink(const ServeOptions& options,
                                          const ServedProcess& process, int port) {
  CoordinatorLinkOptions lo;
  lo.coordinator_address = *options.coordinator;
  lo.tls = options.tls;
  lo.data_plane_keys = process.data_plane_keys();
  process.FillRegistration(&lo.registration);
  lo.registration.set_grpc_address(absl::StrCat(
      options.advertise_host.empty() ? options.host : options.advertise_host, ":", port));
  lo.load = [&process](internal::HeartbeatRequest* hb) { process.FillHeartbeat(hb); };
  // A refusal (another model) is fatal also after the ready line: raising
  // SIGTERM makes Serve drain and exit 1. An absent coordinator is not.
  lo.on_fatal = [](const absl::Status&) { kill(getpid(), SIGTERM); };
  return std::make_unique<CoordinatorLink>(std::move(lo));
}

}  // namespace

int StartupFailure(const std::string& binary, absl::string_view message) {
  std::cerr << binary << ": " << message << "\n";
  return 1;
}

int Serve(const ServeOptions& options, ServedProcess& process) {
  absl::StatusOr<Servers> servers = StartServers(options, process);
  if (!servers.ok()) {
    process.Shutdown();
    return StartupFailure(options.binary, servers.status().message());
  }
  const int port = servers->port;
  process.OnListening(*servers->main);
  if (servers->health) process.OnListening(*servers->health);

  std::unique_ptr<CoordinatorLink> link;
  if (options.coordinator) {
    link = MakeLink(options, process, port);
    link->Start();
    if (absl::Status st = link->WaitRegistered(options.registration_wait);
        absl::IsInvalidArgument(st) || absl::IsPermissionDenied(st)) {
      link->Stop();
      servers->Shutdown(options.server_shutdown_grace);
      process.Shutdown();
      return StartupFailure(options.binary, st.message());
    }
  }
  PrintReadyLine(
      absl::StrCat(options.binary, " ready port=", port,
                   servers->internal ? absl::StrCat(" internal_port=", servers->internal_port) : "",
                   servers->health ? absl::StrCat(" health_port=", servers->health_port) : "", " ",
                   process.ReadyFields()));
  spdlog::info("{}", process.ServingLogLine(port));

  const int sig = WaitForTerminationSignal();
  spdlog::info("signal {}: draining", sig);
  // Leave first, so the coordinator sends nothing new while we drain.
  if (link) link->Stop();
  if (!process.Drain(options.drain_timeout)) {
    spdlog::warn("drain timed out after {}; cancelling what is left",
                 absl::FormatDuration(options.drain_timeout));
  }
  servers->Shutdown(options.server_shutdown_grace);
  process.Shutdown();
  spdlog::info("stopped");
  if (link && !link->fatal().ok()) return StartupFailure(options.binary, link->fatal().message());
  return 0;
}

int RunMain(const char* binary, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << binary << ": internal error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace dsv2::service
