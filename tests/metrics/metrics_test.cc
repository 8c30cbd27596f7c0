#include "metrics/metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/common/metrics_scrape.h"

namespace dsv2::metrics {
namespace {

using testing_util::ScrapeMetrics;

TEST(Metrics, ServesEveryFamilyWithHooksRunBeforeEachScrape) {
  auto server = MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  CoordinatorMetrics c((*server)->registry());
  AttentionMetrics a((*server)->registry());
  ExpertShardMetrics e((*server)->registry());
  int scrapes = 0;
  (*server)->OnScrape([&] {
    ++scrapes;
    c.queue_depth.Set(scrapes);
  });
  c.requests.Add({{"finish_reason", "eos"}}).Increment();
  c.time_to_first_token.Observe(0.003);
  a.expert_assignments.Add({{"expert", "7"}}).Increment(5);
  const std::string text = ScrapeMetrics((*server)->port());
  EXPECT_NE(text.find("200 OK"), std::string::npos) << text;
  for (const char* name :
       {"dsv2_requests_total{finish_reason=\"eos\"} 1", "dsv2_queue_depth 1",
        "dsv2_time_to_first_token_seconds_bucket{le=\"0.005\"} 1",
        "dsv2_time_to_first_token_seconds_count 1", "dsv2_expert_assignments_total{expert=\"7\"} 5",
        "# TYPE dsv2_inter_token_latency_seconds histogram", "# TYPE dsv2_resident_bytes gauge",
        "# TYPE dsv2_expert_batch_rows histogram", "# HELP dsv2_latent_cache_usage_ratio"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name << "\n" << text;
  }
  // The hook ran before the registry was read.
  EXPECT_EQ(scrapes, 1);
  EXPECT_NE(ScrapeMetrics((*server)->port()).find("dsv2_queue_depth 2"), std::string::npos);
}

TEST(Metrics, SetCounterTotalOnlyMovesForward) {
  prometheus::Registry r;
  prometheus::Counter& c = prometheus::BuildCounter().Name("x_total").Help("x").Register(r).Add({});
  SetCounterTotal(c, 5);
  EXPECT_EQ(c.Value(), 5);
  SetCounterTotal(c, 3);  // a component restart cannot make a counter go back
  EXPECT_EQ(c.Value(), 5);
  SetCounterTotal(c, 9);
  EXPECT_EQ(c.Value(), 9);
}

TEST(Metrics, PortInUseIsUnavailable) {
  auto first = MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(first.ok());
  auto second = MetricsServer::Start("127.0.0.1", (*first)->port());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace dsv2::metrics
