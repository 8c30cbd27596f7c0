// api_bench: the public API under load. For each concurrency C, C client
// threads each run R greedy Generate calls (fixed prompt length, fixed
// max_tokens, ignore_eos) through the coordinator, and the same load goes
// straight to the attention nodes' internal Submit (round robin), so the
// ratio shows what the coordinator's path (tokenized request, admission,
// re-streaming with detokenization) costs. Prints tokens/s, time to first
// token (p50/p95, client-measured) and mean inter-token latency.
//   api_bench --endpoint HOST:PORT [--concurrency 1,8,32] [--requests 4]
//             [--prompt-tokens 32] [--max-tokens 64]
// tools/bench/api_bench.sh starts a `dsv2 up` cluster and runs it.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attention_node.grpc.pb.h"
#include "inference.grpc.pb.h"
#include "base/flags.h"
#include "base/version.h"

namespace dsv2 {
namespace {

using Clock = std::chrono::steady_clock;

struct CallTimes {
  double ttft_s = 0;        // first token
  double total_s = 0;       // last token
  int64_t tokens = 0;
  bool ok = false;
};

struct RunResult {
  double wall_s = 0;
  std::vector<CallTimes> calls;
};

// Reads one server stream opened by `open` to its end: time to the first
// response with tokens, time to the end, tokens, status.
template <typename Response, typename Open>
CallTimes TimeStream(Open open) {
  grpc::ClientContext ctx;
  CallTimes t;
  const auto start = Clock::now();
  auto reader = open(&ctx);
  Response resp;
  while (reader->Read(&resp)) {
    if (resp.token_ids_size() > 0 && t.tokens == 0) {
      t.ttft_s = std::chrono::duration<double>(Clock::now() - start).count();
    }
    t.tokens += resp.token_ids_size();
  }
  t.total_s = std::chrono::duration<double>(Clock::now() - start).count();
  t.ok = reader->Finish().ok();
  return t;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

// Runs `clients` threads x `requests` calls of `call`; returns the timings.
template <typename Call>
RunResult Run(int clients, int requests, Call call) {
  RunResult r;
  std::mutex mu;
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int i = 0; i < requests; ++i) {
        CallTimes t = call(c * requests + i);
        std::lock_guard<std::mutex> lock(mu);
        r.calls.push_back(t);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  r.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

void Print(const char* path, int clients, const RunResult& r) {
  int64_t tokens = 0;
  int failed = 0;
  std::vector<double> ttft;
  double itl_sum = 0;
  int64_t itl_n = 0;
  for (const CallTimes& c : r.calls) {
    if (!c.ok) {
      ++failed;
      continue;
    }
    tokens += c.tokens;
    ttft.push_back(c.ttft_s * 1e3);
    if (c.tokens > 1) {
      itl_sum += (c.total_s - c.ttft_s) * 1e3;
      itl_n += c.tokens - 1;
    }
  }
  std::printf("%-12s %5d %10.1f %10.1f %10.1f %10.2f %7d\n", path, clients,
              r.wall_s > 0 ? tokens / r.wall_s : 0.0, Percentile(ttft, 0.5),
              Percentile(ttft, 0.95), itl_n > 0 ? itl_sum / itl_n : 0.0, failed);
}

int Main(int argc, char** argv) {
  std::string endpoint, concurrency_list = "1,8,32";
  int requests = 4, prompt_tokens = 32, max_tokens = 64;
  flags::FlagSet flags("api_bench", std::string(VersionString()));
  flags.String("endpoint", &endpoint, "coordinator HOST:PORT").Required();
  flags.String("concurrency", &concurrency_list, "comma-separated client counts");
  flags.Int("requests", &requests, "calls per client").Min(1);
  flags.Int("prompt-tokens", &prompt_tokens, "prompt length in tokens").Min(1);
  flags.Int("max-tokens", &max_tokens, "tokens generated per call").Min(1);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  std::vector<int> concurrency;
  for (absl::string_view part : absl::StrSplit(concurrency_list, ',')) {
    int c;
    if (!absl::SimpleAtoi(part, &c) || c < 1) {
      return flags.UsageError(absl::StrCat("bad --concurrency entry '", part, "'"));
    }
    concurrency.push_back(c);
  }

  auto channel = grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!st.ok()) {
      std::cerr << "api_bench: GetModelInfo: " << st.error_message() << "\n";
      return 1;
    }
  }
  std::vector<std::unique_ptr<internal::AttentionNode::Stub>> nodes;
  for (const v1::AttentionNodeInfo& n : info.attention_nodes()) {
    nodes.push_back(internal::AttentionNode::NewStub(
        grpc::CreateChannel(n.address(), grpc::InsecureChannelCredentials())));
  }
  // Distinct prompts per call (no prefix is shared anyway).
  auto prompt = [&](int call, auto add) {
    for (int k = 0; k < prompt_tokens; ++k) {
      add(static_cast<int32_t>(100 + (call * 131 + k * 17) % (info.vocab_size() - 200)));
    }
  };
  auto via_coordinator = [&](int call) {
    v1::GenerateRequest req;
    prompt(call, [&](int32_t id) { req.add_prompt_ids(id); });
    req.set_max_tokens(max_tokens);
    req.set_temperature(0.0f);
    req.set_ignore_eos(true);
    return TimeStream<v1::GenerateResponse>(
        [&](grpc::ClientContext* ctx) { return stub->Generate(ctx, req); });
  };
  std::atomic<uint64_t> next_id{1ull << 40};
  auto direct = [&](int call) {
    internal::SubmitRequest req;
    req.set_request_id(next_id.fetch_add(1));
    prompt(call, [&](int32_t id) { req.add_prompt_ids(id); });
    req.set_max_tokens(max_tokens);
    req.set_ignore_eos(true);
    return TimeStream<internal::SubmitResponse>(
        [&](grpc::ClientContext* ctx) { return nodes[call % nodes.size()]->Submit(ctx, req); });
  };
  std::printf("model %s: %zu attention node(s), %d shard(s); prompt %d tokens, %d generated, "
              "%d calls per client\n",
              info.model_name().c_str(), nodes.size(), info.expert_shards_size(), prompt_tokens,
              max_tokens, requests);
  std::printf("%-12s %5s %10s %10s %10s %10s %7s\n", "path", "conc", "tokens/s", "ttft_p50",
              "ttft_p95", "itl_ms", "failed");
  (void)Run(1, 1, via_coordinator);  // warm-up (weights touched, channels up)
  for (int c : concurrency) {
    const RunResult coord = Run(c, requests, via_coordinator);
    Print("coordinator", c, coord);
    const RunResult node = Run(c, requests, direct);
    Print("node-direct", c, node);
    int64_t tc = 0, tn = 0;
    for (const CallTimes& x : coord.calls) tc += x.tokens;
    for (const CallTimes& x : node.calls) tn += x.tokens;
    std::printf("%-12s %5d %10.2f   (coordinator tokens/s over node-direct)\n", "ratio", c,
                (tc / coord.wall_s) / (tn / node.wall_s));
  }
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) { return dsv2::Main(argc, argv); }
