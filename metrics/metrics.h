// dsv2's Prometheus metrics (DESIGN.md section 8): the one place that names
// every metric family, with its help text, type and buckets, on prometheus-cpp
// (core registry + pull Exposer). Names follow Prometheus conventions: dsv2_
// prefix, base units (_seconds, _bytes), _total counters. Labels are bounded
// (finish reason, status code, role/state, expert id < n_routed_experts,
// error reason); never a request id.
//
// Depends on nothing of ours. Thread-safety: prometheus-cpp metrics are
// thread-safe; MetricsServer's scrape hooks run on the HTTP server's thread.
#ifndef DSV2_METRICS_METRICS_H_
#define DSV2_METRICS_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace dsv2::metrics {

// A registry served as Prometheus text format 0.0.4 on http://HOST:PORT/metrics.
class MetricsServer {
 public:
  // Binds host:port (0 = OS-chosen). Unavailable when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port);
  ~MetricsServer();

  int port() const { return port_; }
  prometheus::Registry& registry() { return *registry_; }
  // Runs before every scrape, in registration order (refreshes values that
  // are read from component stats). Register before traffic arrives.
  void OnScrape(std::function<void()> hook);

 private:
  class HookCollectable;
  MetricsServer() = default;
  std::shared_ptr<HookCollectable> hooks_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// Sets a counter to a cumulative total read from a component's own counter
// (increments by the difference; a smaller total is ignored).
void SetCounterTotal(prometheus::Counter& counter, double total);

// dsv2-coordinator.
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>& requests;        // {finish_reason}
  prometheus::Family<prometheus::Counter>& request_errors;  // {code}
  prometheus::Family<prometheus::Counter>& failovers;       // {reason = node_failed|handed_off}
  prometheus::Family<prometheus::Counter>& refused_members;  // {rpc = register|heartbeat}
  prometheus::Family<prometheus::Counter>& auth_failures;    // {reason = missing_key|wrong_key}
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& inter_token_latency;
  prometheus::Histogram& request_duration;
  prometheus::Gauge& queue_depth;
  prometheus::Counter& generated_tokens;
  prometheus::Counter& prompt_tokens;
  prometheus::Family<prometheus::Gauge>& nodes;  // {role, state}
  prometheus::Gauge& placement_version;
  prometheus::Gauge& placement_complete;
};

// dsv2-attention.
struct AttentionMetrics {
  explicit AttentionMetrics(prometheus::Registry& registry);
  prometheus::Histogram& batch_size;
  prometheus::Family<prometheus::Gauge>& latent_cache_blocks;  // {state = used|free}
  prometheus::Gauge& latent_cache_usage_ratio;
  prometheus::Counter& preemptions;
  prometheus::Histogram& step_seconds;
  prometheus::Histogram& expert_dispatch_seconds;
  prometheus::Family<prometheus::Counter>& expert_assignments;  // {expert}
  prometheus::Counter& expert_resends;                          // dispatches re-planned and re-sent
  prometheus::Counter& expert_resent_assignments;  // assignments those re-sends carried
  prometheus::Counter& expert_reconnects;          // shard connections made again
};

// dsv2-expert.
struct ExpertShardMetrics {
  explicit ExpertShardMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>& expert_rows;  // {expert}
  prometheus::Histogram& expert_batch_rows;
  prometheus::Family<prometheus::Counter>& dispatch_errors;  // {reason}
  prometheus::Gauge& resident_bytes;
  // Data-plane connection handshakes (transport/handshake.h): accepted, and
  // refused {reason = malformed|unknown_key|no_key|bad_mac|unauthenticated}.
  prometheus::Counter& data_plane_handshakes;
  prometheus::Family<prometheus::Counter>& data_plane_refusals;
};

// Every service binary running with --tls-* (refreshed at each scrape from
// the files, so a rotation shows at once).
struct TlsMetrics {
  explicit TlsMetrics(prometheus::Registry& registry);
  // Unix time the certificate expires, {file = cert|ca}: --tls-cert's first
  // certificate and --tls-ca's.
  prometheus::Family<prometheus::Gauge>& certificate_expiry;
  // TLS handshakes the process failed (as server or client), {reason =
  // no_client_certificate|certificate_not_trusted|not_tls|other}.
  prometheus::Family<prometheus::Counter>& handshake_failures;
};

}  // namespace dsv2::metrics

#endif  // DSV2_METRICS_METRICS_H_
