// cluster_bench: the disaggregated data plane against the single-process
// engine, on one checkpoint (tools/bench/cluster_bench.sh makes a
// V2-Lite-shaped one). Prints, never asserts:
//   1. decode tokens/s at several batch sizes: single process (LocalEngine:
//      LayerLoop + in-process experts, --threads) vs cluster (the same
//      Scheduler and LayerLoop here with --attention-threads, routed experts
//      on --shards real dsv2-expert processes of 1 thread each, over UCX,
//      default placement). Decode tokens/s = tokens after each request's
//      first / wall time of the steps after every request has its first.
//   2. per-layer dispatch + combine time at the expert seam over the decode
//      steps, (Send + Wait wall time) / dispatches, the same spans
//      StepStats::expert_{send,wait}_seconds time (the Scheduler keeps
//      StepOutput to itself, so a wrapper around the backend times them),
//      vs the raw UCX round trip of the same bytes to an echo process (this
//      binary with --echo-server): one shard message, all of a dispatch's
//      shard messages at once, and one message of their total bytes;
//   3. the share of the expert wait that ping-pong hides at the largest
//      batch: wait per step with min_rows_for_micro_batches 0 vs
//      --pingpong-min-rows.
// Every cluster run also reports whether its tokens equal the
// single-process tokens (they should, bit for bit).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attention_service/data_plane_expert_backend.h"
#include "attention_service/scheduler.h"
#include "base/flags.h"
#include "base/version.h"
#include "tools/dsv2/local_engine.h"
#include "tools/process/child_process.h"
#include "service/service_common.h"
#include "transport/ucx_data_plane.h"

namespace dsv2 {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::cerr << "cluster_bench: " << what << "\n";
  std::exit(1);
}

// A child process with its stdout on a pipe; dies with us.
std::unique_ptr<process::ChildProcess> Spawn(const std::vector<std::string>& argv) {
  process::ChildOptions o;
  o.argv = argv;
  auto child = process::ChildProcess::Start(o);
  if (!child.ok()) Die(child.status().ToString());
  return *std::move(child);
}

std::string ReadyLine(process::ChildProcess& child, absl::Duration timeout) {
  absl::StatusOr<std::string> line = child.ReadLine(timeout);
  if (!line.ok()) {
    Die(absl::StrCat("no ready line from pid ", child.pid(), ": ", line.status().ToString()));
  }
  return *line;
}

std::map<std::string, std::string> Fields(const std::string& line) {
  std::map<std::string, std::string> f;
  for (absl::string_view kv : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
    const size_t eq = kv.find('=');
    if (eq != absl::string_view::npos)
      f[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  return f;
}

// Times Send and Wait at the expert seam, and remembers the bytes.
class TimedBackend : public ExpertBackend {
 public:
  explicit TimedBackend(ExpertBackend& inner) : inner_(inner) {}
  absl::StatusOr<uint64_t> Send(router::ExpertDispatch d, const DispatchContext& c) override {
    const auto t = Clock::now();
    auto r = inner_.Send(std::move(d), c);
    send_s += Since(t);
    ++dispatches;
    return r;
  }
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override {
    const auto t = Clock::now();
    auto r = inner_.Wait(ticket);
    wait_s += Since(t);
    return r;
  }
  void Forget(uint64_t ticket) override { inner_.Forget(ticket); }
  void Reset() { send_s = wait_s = 0, dispatches = 0; }
  double send_s = 0, wait_s = 0;
  int64_t dispatches = 0;

 private:
  ExpertBackend& inner_;
};

struct DecodeResult {
  double tokens_per_s = 0;
  double decode_s = 0;
  int64_t decode_steps = 0;
  std::vector<std::vector<int32_t>> tokens;  // per request
};

// B requests of `prompt_len` tokens, `new_tokens` each (ignore EOS): prefill
// all, then time the decode steps (every step after the last first token).
DecodeResult RunDecode(const ModelConfig& config, LayerLoop& loop, LatentCache& cache, int batch,
                       int prompt_len, int new_tokens, TimedBackend* timed) {
  SchedulerOptions so;
  so.max_running = batch;
  so.max_step_tokens = int64_t{batch} * prompt_len + batch;
  Scheduler s(config, loop, cache, so);
  DecodeResult r;
  r.tokens.resize(batch);
  for (int b = 0; b < batch; ++b) {
    GenerationRequest g;
    g.id = static_cast<uint64_t>(b + 1);
    for (int t = 0; t < prompt_len; ++t) {
      g.prompt.push_back(static_cast<int32_t>((100 + 37 * b + 11 * t) % config.vocab_size));
    }
    g.max_tokens = new_tokens;
    g.ignore_eos = true;
    if (absl::Status st = s.Add(std::move(g)); !st.ok()) Die(st.ToString());
  }
  std::vector<SequenceEvent> events;
  const auto collect = [&] {
    for (const SequenceEvent& e : events) {
      if (!e.error.ok()) Die(e.error.ToString());
      auto& v = r.tokens[e.id - 1];
      v.insert(v.end(), e.tokens.begin(), e.tokens.end());
    }
    events.clear();
  };
  // Prefill (one step with this budget) gives every request its first token.
  while (std::any_of(r.tokens.begin(), r.tokens.end(), [](auto& v) { return v.empty(); })) {
    s.Step(&events);
    collect();
  }
  if (timed) timed->Reset();
  const auto t = Clock::now();
  while (s.Step(&events)) {
    collect();
    ++r.decode_steps;
  }
  r.decode_s = Since(t);
  r.tokens_per_s = static_cast<double>(batch) * (new_tokens - 1) / r.decode_s;
  return r;
}

int EchoServerMain(const std::string& transports) {
  transport::UcxOptions o;
  o.transports = transports;
  // The request's first 8 bytes say how many reply bytes to return.
  auto server = transport::CreateUcxServer(o, [](std::span<const std::byte> req) {
    uint64_t n = 8;
    if (req.size() >= 8) std::memcpy(&n, req.data(), 8);
    return std::vector<std::byte>(std::max<uint64_t>(n, 1));
  });
  if (!server.ok()) Die(server.status().ToString());
  std::cout << "echo ready ucx_address=" << (*server)->address() << std::endl;
  service::BlockTerminationSignals();
  service::WaitForTerminationSignal();
  return 0;
}

// Median wall time of sending `parts` requests of `req_bytes` at once to the
// echo peer and waiting for all `reply_bytes` replies.
double RawRoundTrip(transport::DataPlaneClient& client, transport::PeerId peer, int parts,
                    size_t req_bytes, size_t reply_bytes, int iters) {
  std::vector<double> t(iters);
  for (int i = -iters / 4; i < iters; ++i) {  // the first quarter warms up
    const auto start = Clock::now();
    std::vector<uint64_t> tickets;
    for (int p = 0; p < parts; ++p) {
      std::vector<std::byte> m(std::max<size_t>(req_bytes, 8));
      const uint64_t n = reply_bytes;
      std::memcpy(m.data(), &n, 8);
      auto tk = client.Send(peer, std::move(m));
      if (!tk.ok()) Die(tk.status().ToString());
      tickets.push_back(*tk);
    }
    for (uint64_t tk : tickets) {
      auto r = client.Wait(tk, absl::Now() + absl::Seconds(10));
      if (!r.ok()) Die(r.status().ToString());
    }
    if (i >= 0) t[i] = Since(start);
  }
  std::sort(t.begin(), t.end());
  return t[iters / 2];
}

int Main(int argc, char** argv) {
  std::string model, transports = "sm", batch_list = "1,8,32";
  std::optional<std::string> bin_dir_flag;
  int threads = 2, att_threads = 1, shards = 4, prompt_len = 16, new_tokens = 17, raw_iters = 300;
  int64_t pp_rows = 8;
  bool echo_server = false;
  bool single_only = false;
  flags::FlagSet flags("cluster_bench", std::string(VersionString()));
  flags.String("model", &model, "checkpoint directory (required unless --echo-server)");
  flags.String("bin-dir", &bin_dir_flag, "build directory with the dsv2-expert binary")
      .DefaultText("../ of this binary");
  flags.Int("threads", &threads, "threads of the single-process engine").Min(1);
  flags.Int("attention-threads", &att_threads, "threads of the cluster's attention side").Min(1);
  flags.Int("shards", &shards, "expert shard processes, 1 thread each").Min(1);
  flags.String("ucx-transports", &transports, "UCX transports");
  flags.String("batches", &batch_list, "comma-separated batch sizes");
  flags.Int("prompt-tokens", &prompt_len, "prompt length").Min(1);
  flags.Int("new-tokens", &new_tokens, "tokens generated per request (17: 16 decode steps)")
      .Min(2);
  flags.Int("raw-iters", &raw_iters, "round trips per raw UCX median").Min(4);
  flags.Int("pingpong-min-rows", &pp_rows,
            "section 3: min_rows_for_micro_batches when ping-pong is on").Min(0);
  flags.Bool("single-only", &single_only,
             "only the single-process decode figures (no shards; tools/bench/side_by_side.py)");
  flags.Bool("echo-server", &echo_server, "internal: run as the raw round-trip echo peer");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (echo_server) return EchoServerMain(transports);
  if (model.empty()) return flags.UsageError("--model is required");
  std::string self = argv[0];
  const std::string bin_dir = bin_dir_flag.value_or(self.substr(0, self.rfind('/')) + "/..");
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(batch_list, ',')) {
    int v;
    if (!absl::SimpleAtoi(b, &v) || v < 1) Die("bad --batches");
    batches.push_back(v);
  }
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int64_t cache_tokens = int64_t{max_batch} * (prompt_len + new_tokens + 64);

  // --- single process
  LocalEngineOptions lo;
  lo.model_dir = model;
  lo.threads = threads;
  lo.cache_tokens = cache_tokens;
  auto engine = LocalEngine::Open(lo);
  if (!engine.ok()) Die(engine.status().ToString());
  const ModelConfig& config = (*engine)->config();
  std::printf("model %s: %lld layers, hidden %lld, %lld routed experts (top-%lld), %s\n",
              model.c_str(), static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size),
              static_cast<long long>(config.n_routed_experts),
              static_cast<long long>(config.num_experts_per_tok),
              DTypeName((*engine)->weights().activation_dtype()));
  // Warm-up: fault in the mapped weights (most experts) before timing.
  RunDecode(config, (*engine)->loop(), (*engine)->cache(), max_batch, prompt_len, 3, nullptr);
  std::map<int, DecodeResult> single;
  for (int b : batches) {
    single[b] = RunDecode(config, (*engine)->loop(), (*engine)->cache(), b, prompt_len, new_tokens,
                          nullptr);
  }
  if (single_only) {
    std::printf(
        "\nsingle process, %d threads, ISA %s: decode tokens/s (%d-token prompts, %d decode "
        "steps)\n%6s %14s\n",
        threads, std::string(kernels::CpuIsaName((*engine)->isa())).c_str(), prompt_len,
        new_tokens - 1, "batch", "single");
    for (int b : batches) std::printf("%6d %14.1f\n", b, single[b].tokens_per_s);
    return 0;
  }

  // --- cluster: shard processes + this process as the attention side
  std::vector<std::unique_ptr<process::ChildProcess>> children;
  std::vector<ShardTarget> addresses;
  for (int s = 0; s < shards; ++s) {
    children.push_back(Spawn({bin_dir + "/expert_service/dsv2-expert", "--model", model,
                              "--shard-id", absl::StrCat(s), "--num-shards", absl::StrCat(shards),
                              "--threads", "1", "--ucx-transports", transports}));
  }
  int64_t shard_rss = 0;
  for (auto& c : children) {
    auto f = Fields(ReadyLine(*c, absl::Seconds(600)));
    if (f["ucx_address"].empty()) Die("bad ready line");
    addresses.push_back(ShardTarget{f["ucx_address"], 0});
    int64_t rss = 0;
    if (absl::SimpleAtoi(f["resident_bytes"], &rss)) shard_rss = std::max(shard_rss, rss);
  }
  auto echo = Spawn({self, "--echo-server", "--ucx-transports", transports});
  const std::string echo_address = Fields(ReadyLine(*echo, absl::Seconds(60)))["ucx_address"];
  if (echo_address.empty()) Die("bad echo ready line");

  transport::UcxOptions uo;
  uo.transports = transports;
  auto client = transport::CreateUcxClient(uo);
  if (!client.ok()) Die(client.status().ToString());
  DataPlaneExpertBackend remote(**client, RemoteExpertsOptions{});
  auto placement = router::DefaultPlacement(router::GateParams::FromConfig(config), shards, 1);
  if (!placement.ok()) Die(placement.status().ToString());
  if (absl::Status st = remote.SetPlacement(*placement, addresses); !st.ok()) Die(st.ToString());
  TimedBackend timed(remote);
  auto cache = LatentCache::Create(config.num_hidden_layers, config.latent_dim(),
                                   (*engine)->weights().activation_dtype(),
                                   LatentCache::BlocksForTokens(cache_tokens));
  if (!cache.ok()) Die(cache.status().ToString());
  kernels::ThreadPool pool(att_threads);
  kernels::CpuContext ctx{(*engine)->isa(), &pool};
  LayerLoop loop((*engine)->weights(), **cache, timed, ctx,
                 LayerLoopOptions{.min_rows_for_micro_batches = 0});
  const int64_t moe_layers = config.num_hidden_layers - config.first_k_dense_replace;

  std::printf("\nthreads: single process %d; cluster %d (attention) + %d shards x 1 = %d\n",
              threads, att_threads, shards, att_threads + shards);
  std::printf("expert shard resident memory (largest of %d, after prefault): %.1f MiB\n", shards,
              shard_rss / 1048576.0);
  std::printf("\n1. decode tokens/s (%d-token prompts, %d decode steps, UCX %s)\n", prompt_len,
              new_tokens - 1, transports.c_str());
  std::printf("%6s %14s %14s %8s %s\n", "batch", "single", "cluster", "ratio", "tokens equal");
  std::map<int, std::tuple<double, double, double, int64_t>> seam;  // send, wait, step, disp
  std::map<int, RemoteExpertsStats> bytes;
  RunDecode(config, loop, **cache, max_batch, prompt_len, 3, &timed);  // warm-up
  for (int b : batches) {
    const RemoteExpertsStats before = remote.stats();
    const DecodeResult c = RunDecode(config, loop, **cache, b, prompt_len, new_tokens, &timed);
    const RemoteExpertsStats after = remote.stats();
    RemoteExpertsStats d;
    d.shard_requests = after.shard_requests - before.shard_requests;
    d.request_bytes = after.request_bytes - before.request_bytes;
    d.reply_bytes = after.reply_bytes - before.reply_bytes;
    d.dispatches = after.dispatches - before.dispatches;
    bytes[b] = d;
    seam[b] = {timed.send_s, timed.wait_s, c.decode_s, timed.dispatches};
    std::printf("%6d %14.1f %14.1f %8.2f %s\n", b, single[b].tokens_per_s, c.tokens_per_s,
                c.tokens_per_s / single[b].tokens_per_s,
                c.tokens == single[b].tokens ? "yes" : "NO");
  }

  std::printf(
      "\n2. per-layer dispatch + combine at the seam (decode steps; includes the shards' expert "
      "FFN) vs the raw UCX round trip of the same bytes to an echo process (median of %d)\n"
      "   seam = (Send + Wait time) / dispatches; raw: 1 shard message alone, all of a "
      "dispatch's shard messages at once (what the seam sends), and one message of their "
      "total bytes\n",
      raw_iters);
  std::printf("%6s %7s %11s %11s %10s %10s %10s %10s %10s\n", "batch", "shards", "req B/shard",
              "rep B/shard", "seam us", "raw 1 us", "raw all us", "raw tot us", "seam/all");
  auto echo_peer = (*client)->Connect(echo_address);
  if (!echo_peer.ok()) Die(echo_peer.status().ToString());
  RawRoundTrip(**client, *echo_peer, 1, 1024, 1024, raw_iters);  // warm-up
  std::map<int, double> seam_share;
  for (int b : batches) {
    const RemoteExpertsStats& d = bytes[b];
    const auto [send_s, wait_s, step_s, disp] = seam[b];
    const double per_layer = (send_s + wait_s) / static_cast<double>(std::max<int64_t>(1, disp));
    const double parts =
        static_cast<double>(d.shard_requests) / std::max<int64_t>(1, d.dispatches);
    const int n = std::max(1, static_cast<int>(parts + 0.5));
    const size_t req =
        static_cast<size_t>(d.request_bytes / std::max<int64_t>(1, d.shard_requests));
    const size_t rep = static_cast<size_t>(d.reply_bytes / std::max<int64_t>(1, d.shard_requests));
    const double raw1 = RawRoundTrip(**client, *echo_peer, 1, req, rep, raw_iters);
    const double raw_all = RawRoundTrip(**client, *echo_peer, n, req, rep, raw_iters);
    const double raw_tot = RawRoundTrip(**client, *echo_peer, 1, n * req, n * rep, raw_iters);
    seam_share[b] = 100.0 * (send_s + wait_s) / step_s;
    std::printf("%6d %7.1f %11zu %11zu %10.1f %10.1f %10.1f %10.1f %10.2f\n", b, parts, req, rep,
                per_layer * 1e6, raw1 * 1e6, raw_all * 1e6, raw_tot * 1e6, per_layer / raw_all);
  }
  std::printf("   share of decode time at the seam:");
  for (int b : batches) std::printf("  batch %d %.0f%%", b, seam_share[b]);
  std::printf("\n");

  std::printf("\n3. ping-pong at batch %d: min_rows_for_micro_batches 0 (off) vs %lld (on)\n",
              max_batch, static_cast<long long>(pp_rows));
  double wait_per_step[2], seam_per_step[2], tps[2];
  for (int on = 0; on < 2; ++on) {
    loop.set_options({.min_rows_for_micro_batches = on ? pp_rows : 0});
    const DecodeResult c =
        RunDecode(config, loop, **cache, max_batch, prompt_len, new_tokens, &timed);
    const double steps = static_cast<double>(std::max<int64_t>(1, c.decode_steps));
    wait_per_step[on] = timed.wait_s / steps;
    seam_per_step[on] = (timed.send_s + timed.wait_s) / steps;
    tps[on] = c.tokens_per_s;
    std::printf(
        "  %-4s expert wait %.2f ms/step, send %.2f ms/step, %.1f dispatches/step, %.1f "
        "tokens/s, tokens equal: %s\n",
        on ? "on" : "off", wait_per_step[on] * 1e3, timed.send_s / steps * 1e3,
        static_cast<double>(timed.dispatches) / steps, c.tokens_per_s,
        c.tokens == single[max_batch].tokens ? "yes" : "NO");
  }
  std::printf(
      "  communication hidden by ping-pong: %.0f%% of the expert wait (%.2f -> %.2f "
      "ms/step over %lld MoE layers); tokens/s on/off x%.2f\n",
      100.0 * (1.0 - wait_per_step[1] / wait_per_step[0]), wait_per_step[0] * 1e3,
      wait_per_step[1] * 1e3, static_cast<long long>(moe_layers), tps[1] / tps[0]);
  std::printf("  send + wait at the seam: %.2f -> %.2f ms/step (%.0f%% less)\n",
              seam_per_step[0] * 1e3, seam_per_step[1] * 1e3,
              100.0 * (1.0 - seam_per_step[1] / seam_per_step[0]));

  for (auto& c : children) c->Stop(SIGTERM, absl::InfiniteDuration()).IgnoreError();
  echo->Stop(SIGTERM, absl::InfiniteDuration()).IgnoreError();
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) { return dsv2::Main(argc, argv); }
