// CoordinatorProcess: everything one dsv2-coordinator process runs behind
// its gRPC port (DESIGN.md section 2): the model's config, tokenizer and
// chat template (ServedModel), the Coordinator (public dsv2.v1.Inference +
// internal membership services, placement and cancellation threads) and
// the coordinator's /metrics. service::Serve runs it with server
// reflection. Health: "" is SERVING while the process runs;
// "dsv2.v1.Inference" only while an attention node and a complete placement
// exist (NOT_SERVING from the start of a drain).
//
// Threads: Create and the ServedProcess methods run on the main thread; the
// Coordinator's threads and gRPC's belong to the objects held here.
#ifndef DSV2_COORDINATOR_COORDINATOR_PROCESS_H_
#define DSV2_COORDINATOR_COORDINATOR_PROCESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_server.h"
#include "service/serve.h"

namespace dsv2::coordinator {

struct CoordinatorProcessOptions {
  // config.json (+ tokenizer.json, tokenizer_config.json: without them only
  // prompt_ids requests are served).
  std::string model_dir;
  std::string host = "127.0.0.1";  // the /metrics server binds here
  int metrics_port = 0;            // 0 = OS-chosen
  // Membership, admission and placement; `metrics`, `model_name` and
  // `model_type` are filled by Create.
  CoordinatorOptions coordinator;
};

class CoordinatorProcess final : public service::ServedProcess {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorProcess>> Create(
      CoordinatorProcessOptions options);
  ~CoordinatorProcess() override;

  // The public API; the membership service is internal (--internal-port).
  std::vector<grpc::Service*> services() override;
  std::vector<grpc::Service*> internal_services() override;
  void OnListening(grpc::Server& server) override;
  std::string ReadyFields() const override;
  std::string ServingLogLine(int port) const override;
  bool Drain(absl::Duration timeout) override;
  void Shutdown() override;

 private:
  struct Parts;  // coordinator_process.cc
  explicit CoordinatorProcess(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_COORDINATOR_PROCESS_H_
