#include "metrics/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace dsv2::metrics {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using Buckets = prometheus::Histogram::BucketBoundaries;

prometheus::Histogram& Histogram(prometheus::Registry& r, const std::string& name,
                                 const std::string& help, const Buckets& buckets) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

prometheus::Counter& Counter(prometheus::Registry& r, const std::string& name,
                             const std::string& help) {
  return BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge& Gauge(prometheus::Registry& r, const std::string& name,
                         const std::string& help) {
  return BuildGauge().Name(name).Help(help).Register(r).Add({});
}

// Seconds: 1 ms .. 30 s, latency-shaped.
const Buckets kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,  0.5,    1,     2,    5,     10,   30};
const Buckets kTokenGapBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                  0.05,   0.1,   0.25,   0.5,   1,    2.5};
const Buckets kDurationBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
const Buckets kDispatchBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                  0.025,  0.05,    0.1,    0.25,  0.5,    1};
const Buckets kBatchBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
const Buckets kRowsBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384};

}  // namespace

class MetricsServer::HookCollectable final : public prometheus::Collectable {
 public:
  void Add(std::function<void()> hook) {
    absl::MutexLock lock(&mu_);
    hooks_.push_back(std::move(hook));
  }
  std::vector<prometheus::MetricFamily> Collect() const override {
    absl::MutexLock lock(&mu_);
    for (const auto& h : hooks_) h();
    return {};
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::function<void()>> hooks_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host,
                                                                   int port) {
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->hooks_ = std::make_shared<HookCollectable>();
  s->registry_ = std::make_shared<prometheus::Registry>();
  try {
    s->exposer_ = std::make_unique<prometheus::Exposer>(absl::StrCat(host, ":", port));
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", host, ":", port, ": ", e.what()));
  }
  // Hooks first: the Exposer collects in registration order, so the
  // registry is read after the hooks refreshed it.
  s->exposer_->RegisterCollectable(s->hooks_);
  s->exposer_->RegisterCollectable(s->registry_);
  const std::vector<int> ports = s->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", host, ":", port));
  }
  s->port_ = ports[0];
  return s;
}

MetricsServer::~MetricsServer() = default;

void MetricsServer::OnScrape(std::function<void()> hook) { hooks_->Add(std::move(hook)); }

void SetCounterTotal(prometheus::Counter& counter, double total) {
  const double delta = total - counter.Value();
  if (delta > 0) counter.Increment(delta);
}

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& r)
    : requests(BuildCounter()
                   .Name("dsv2_requests_total")
                   .Help("Generate requests completed, by finish reason (length, stop, eos)")
                   .Register(r)),
      request_errors(BuildCounter()
                         .Name("dsv2_request_errors_total")
                         .Help("Generate requests that ended with an error, by gRPC status code")
                         .Register(r)),
      failovers(BuildCounter()
                    .Name("dsv2_failovers_total")
                    .Help("Generate requests resumed on another attention node, by reason "
                          "(node_failed: its stream broke; handed_off: the node was leaving)")
                    .Register(r)),
      refused_members(BuildCounter()
                          .Name("dsv2_membership_refusals_total")
                          .Help("Register and Heartbeat calls refused as invalid (bad address, "
                                "capacity, shard id, role, model or placement version), by rpc")
                          .Register(r)),
      auth_failures(BuildCounter()
                        .Name("dsv2_auth_failures_total")
                        .Help("Public API calls refused UNAUTHENTICATED, by reason (missing_key: "
                              "no \"authorization: Bearer KEY\"; wrong_key: a key not in "
                              "--api-key-file)")
                        .Register(r)),
      time_to_first_token(Histogram(r, "dsv2_time_to_first_token_seconds",
                                    "Seconds from receiving a Generate request to its first "
                                    "generated token (queueing included)",
                                    kLatencyBuckets)),
      inter_token_latency(Histogram(r, "dsv2_inter_token_latency_seconds",
                                    "Seconds between consecutive generated tokens of a request",
                                    kTokenGapBuckets)),
      request_duration(Histogram(r, "dsv2_request_duration_seconds",
                                 "Seconds from receiving a Generate request to its end "
                                 "(successful requests)",
                                 kDurationBuckets)),
      queue_depth(Gauge(r, "dsv2_queue_depth",
                        "Requests waiting in the admission queue for an attention node")),
      generated_tokens(
          Counter(r, "dsv2_generated_tokens_total", "Tokens generated and streamed to clients")),
      prompt_tokens(
          Counter(r, "dsv2_prompt_tokens_total", "Prompt tokens of requests admitted to a node")),
      nodes(BuildGauge()
                .Name("dsv2_nodes")
                .Help("Cluster members by role (attention, expert_shard) and state (live; dead: "
                      "declared dead by heartbeat timeout and not replaced since)")
                .Register(r)),
      placement_version(Gauge(r, "dsv2_placement_version",
                              "Version of the published expert placement (0: none yet)")),
      placement_complete(Gauge(r, "dsv2_placement_complete",
                               "1 when every routed expert is held by a live shard, else 0")) {}

AttentionMetrics::AttentionMetrics(prometheus::Registry& r)
    : batch_size(Histogram(r, "dsv2_batch_size", "Sequences in one forward step", kBatchBuckets)),
      latent_cache_blocks(BuildGauge()
                              .Name("dsv2_latent_cache_blocks")
                              .Help("Latent-cache blocks (64 tokens each) by state (used, free)")
                              .Register(r)),
      latent_cache_usage_ratio(Gauge(r, "dsv2_latent_cache_usage_ratio",
                                     "Fraction of latent-cache blocks in use (0 to 1)")),
      preemptions(Counter(r, "dsv2_preemptions_total",
                          "Sequences preempted (blocks freed, recomputed later) for cache space")),
      step_seconds(Histogram(r, "dsv2_step_seconds",
                             "Seconds of one forward step (all layers, expert round trips "
                             "included)",
                             kLatencyBuckets)),
      expert_dispatch_seconds(Histogram(r, "dsv2_expert_dispatch_seconds",
                                        "Seconds from sending one dispatch (layer, micro-batch) "
                                        "to the expert shards until all replies arrived",
                                        kDispatchBuckets)),
      expert_assignments(BuildCounter()
                             .Name("dsv2_expert_assignments_total")
                             .Help("Token-to-expert assignments dispatched, by routed expert id "
                                   "(the per-expert load for rebalancing)")
                             .Register(r)),
      expert_resends(
          Counter(r, "dsv2_expert_resends_total",
                  "Expert dispatches re-planned and re-sent (a shard failed, went "
                  "silent past a newer placement, or was on another placement version)")),
      expert_resent_assignments(Counter(r, "dsv2_expert_resent_assignments_total",
                                        "Token->expert assignments carried by re-sends (only those "
                                        "not yet answered are re-sent)")),
      expert_reconnects(Counter(r, "dsv2_expert_reconnects_total",
                                "Data-plane connections to expert shards made again: to a "
                                "shard's new membership at the same address, or after a "
                                "connection failed while its shard stayed in the placement")) {}

ExpertShardMetrics::ExpertShardMetrics(prometheus::Registry& r)
    : expert_rows(BuildCounter()
                      .Name("dsv2_expert_rows_total")
                      .Help("Rows computed by this shard, by routed expert id")
                      .Register(r)),
      expert_batch_rows(Histogram(r, "dsv2_expert_batch_rows",
                                  "Assignment rows in one dispatch message", kRowsBuckets)),
      dispatch_errors(BuildCounter()
                          .Name("dsv2_dispatch_errors_total")
                          .Help("Dispatches answered with an error, by reason (malformed, "
                                "placement_version, not_found, internal)")
                          .Register(r)),
      resident_bytes(Gauge(r, "dsv2_resident_bytes", "Resident set size of the process, bytes")),
      data_plane_handshakes(BuildCounter()
                                .Name("dsv2_data_plane_handshakes_total")
                                .Help("Data-plane connections whose membership handshake succeeded")
                                .Register(r)
                                .Add({})),
      data_plane_refusals(
          BuildCounter()
              .Name("dsv2_data_plane_refusals_total")
              .Help("Data-plane connections refused, by reason (malformed, unknown_key, no_key, "
                    "bad_mac: not a member, unauthenticated: a request before the handshake)")
              .Register(r)) {}

TlsMetrics::TlsMetrics(prometheus::Registry& r)
    : certificate_expiry(BuildGauge()
                             .Name("dsv2_tls_certificate_expiry_timestamp_seconds")
                             .Help("Unix time the TLS certificate in use expires, by file (cert: "
                                   "--tls-cert, ca: --tls-ca), read at each scrape")
                             .Register(r)),
      handshake_failures(BuildCounter()
                             .Name("dsv2_tls_handshake_failures_total")
                             .Help("TLS handshakes this process failed, as server or client, by "
                                   "reason (no_client_certificate, certificate_not_trusted, "
                                   "not_tls, other)")
                             .Register(r)) {}

}  // namespace dsv2::metrics
