#include "tools/dsv2/generate_command.h"

#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "base/version.h"
#include "inference.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "service/tls.h"

namespace dsv2 {
namespace {

// Comma-separated int32 ids.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& flag, const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", std::string(part), "' is not a token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

const char* FinishReasonName(dsv2::v1::FinishReason r) {
  switch (r) {
    case dsv2::v1::FINISH_REASON_LENGTH:
      return "length";
    case dsv2::v1::FINISH_REASON_STOP:
      return "stop";
    case dsv2::v1::FINISH_REASON_EOS:
      return "eos";
    default:
      return "unspecified";
  }
}

// Waits, on its own joinable thread, for SIGINT/SIGTERM (blocked in every
// thread, read from a signalfd) and cancels the call; Finish wakes and
// joins it.
class CancelOnSignal {
 public:
  // REQUIRES: called before any other thread exists (the signal mask).
  explicit CancelOnSignal(grpc::ClientContext* ctx) : ctx_(ctx) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    signal_fd_ = signalfd(-1, &set, SFD_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_CLOEXEC);
    thread_ = std::thread([this] { Watch(); });
  }
  ~CancelOnSignal() {
    Finish();
    close(signal_fd_);
    close(wake_fd_);
  }
  void Finish() {
    if (!thread_.joinable()) return;
    const uint64_t one = 1;
    const ssize_t ignored = write(wake_fd_, &one, sizeof one);
    (void)ignored;
    thread_.join();
  }
  // The signal that cancelled the call, 0 if none.
  int signal() const { return signal_.load(); }

 private:
  void Watch() {
    pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    while (true) {
      if (poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents != 0) return;
      signalfd_siginfo info;
      if (fds[0].revents != 0 &&
          read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        signal_.store(static_cast<int>(info.ssi_signo));
        ctx_->TryCancel();
        return;
      }
    }
  }

  grpc::ClientContext* const ctx_;
  int signal_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<int> signal_{0};
  std::thread thread_;
};

// The command's flags: the request to send plus how to show it.
struct GenerateCommand {
  std::string endpoint;
  std::string api_key;  // sent as "authorization: Bearer KEY" when not empty
  std::string tls_ca;   // PEM authority of the coordinator's certificate; empty = plaintext
  dsv2::v1::GenerateRequest request;
  bool json = false;
  std::optional<absl::Duration> timeout;
};

template <typename T, typename Setter>
void SetIf(const std::optional<T>& v, Setter set) {
  if (v) set(*v);
}

// Parses the flags into *cmd; an exit code (0 help, 2 usage) when the
// command should stop. Range checks of sampling fields are the server's
// (INVALID_ARGUMENT names the field); only values that do not parse are
// usage errors here.
std::optional<int> ParseGenerateFlags(int argc, char** argv, GenerateCommand* cmd) {
  flags::FlagSet flags("dsv2 generate", std::string(VersionString()));
  std::optional<std::string> prompt, prompt_ids, chat, system;
  std::optional<int32_t> max_tokens, top_k, logprobs;
  std::optional<float> temperature, top_p;
  std::optional<uint64_t> seed;
  bool ignore_eos = false, no_special_tokens = false;
  std::vector<std::string> stop;
  std::string stop_token_ids;
  flags.String("endpoint", &cmd->endpoint, "HOST:PORT of the coordinator").Required();
  flags.String("prompt", &prompt, "prompt text (BOS added unless --no-special-tokens)");
  flags.String("prompt-ids", &prompt_ids, "comma-separated token ids, used verbatim");
  flags.String("chat", &chat, "one user message, rendered with the model's chat template");
  flags.String("system", &system, "a system message before --chat's user message");
  flags.Int("max-tokens", &max_tokens, "tokens to generate")
      .DefaultText("the server's, 256 capped by context");
  flags.Double("temperature", &temperature, "sampling temperature (0 = greedy)")
      .DefaultText("the server's, 1.0");
  flags.Double("top-p", &top_p, "nucleus sampling mass in (0, 1]").DefaultText("1");
  flags.Int("top-k", &top_k, "keep the k most likely tokens (0 = all)").DefaultText("0");
  flags.Int("seed", &seed, "sampling seed").DefaultText("random, reported in --json");
  flags.Bool("ignore-eos", &ignore_eos, "keep generating after EOS");
  flags.Repeated("stop", &stop, "stop when the text contains this string (repeat for several)");
  flags.String("stop-token-ids", &stop_token_ids, "comma-separated token ids that stop generation");
  flags.Int("logprobs", &logprobs,
            "report each token's log-probability and the N most likely, N in [0, 20]");
  flags.Bool("no-special-tokens", &no_special_tokens,
             "tokenize --prompt without special tokens (no BOS)");
  flags.Duration("timeout", &cmd->timeout, "deadline of the call")
      .Above(absl::ZeroDuration()).DefaultText("none")
      .LegacyAlias("timeout-s", absl::Seconds(1));
  flags.Bool("json", &cmd->json, "print one JSON object on stdout; stream text to stderr");
  flags.String("api-key", &cmd->api_key,
               "the coordinator's API key (its --api-key-file); give it as DSV2_API_KEY rather "
               "than on the command line, where other users of the machine can read it");
  flags
      .String("tls-ca", &cmd->tls_ca,
              "connect with TLS, verifying the coordinator's certificate against this PEM "
              "authority (`dsv2 up` prints its throw-away one in its ready line as tls_ca=)")
      .DefaultText("none: plaintext");
  flags.ExclusiveGroup({"prompt", "prompt-ids", "chat"}, flags::GroupRule::kExactlyOne);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv, 2)) return exit_code;
  if (cmd->endpoint.empty()) return flags.UsageError("--endpoint HOST:PORT is required");
  if (system && !chat) return flags.UsageError("--system needs --chat");

  dsv2::v1::GenerateRequest& req = cmd->request;
  if (prompt) req.set_prompt(*prompt);
  if (chat) {
    if (system) {
      auto* m = req.add_messages();
      m->set_role("system");
      m->set_content(*system);
    }
    auto* m = req.add_messages();
    m->set_role("user");
    m->set_content(*chat);
  }
  if (prompt_ids) {
    auto ids = ParseIdList("prompt-ids", *prompt_ids);
    if (!ids.ok()) return flags.UsageError(ids.status().message());
    for (int32_t id : *ids) req.add_prompt_ids(id);
  }
  SetIf(max_tokens, [&](int32_t v) { req.set_max_tokens(v); });
  SetIf(top_k, [&](int32_t v) { req.set_top_k(v); });
  SetIf(logprobs, [&](int32_t v) { req.set_logprobs(v); });
  SetIf(temperature, [&](float v) { req.set_temperature(v); });
  SetIf(top_p, [&](float v) { req.set_top_p(v); });
  SetIf(seed, [&](uint64_t v) { req.set_seed(v); });
  req.set_ignore_eos(ignore_eos);
  for (const std::string& s : stop) req.add_stop(s);
  if (flags.was_set("stop-token-ids")) {
    auto ids = ParseIdList("stop-token-ids", stop_token_ids);
    if (!ids.ok()) return flags.UsageError(ids.status().message());
    for (int32_t id : *ids) req.add_stop_token_ids(id);
  }
  if (no_special_tokens) req.set_add_special_tokens(false);
  req.set_return_prompt_ids(cmd->json);
  return std::nullopt;
}

}  // namespace

int GenerateCommandMain(int argc, char** argv) {
  GenerateCommand cmd;
  if (std::optional<int> exit_code = ParseGenerateFlags(argc, argv, &cmd)) return *exit_code;
  const std::optional<std::string> endpoint = cmd.endpoint;
  const bool json_out = cmd.json;
  dsv2::v1::GenerateRequest& req = cmd.request;

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      service::PublicChannelCredentials(cmd.tls_ca);
  if (!credentials.ok()) {
    std::cerr << "dsv2 generate: " << credentials.status().message() << "\n";
    return 2;
  }
  grpc::ClientContext ctx;
  if (!cmd.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + cmd.api_key);
  if (cmd.timeout) ctx.set_deadline(absl::ToChronoTime(absl::Now() + *cmd.timeout));
  // Before the channel: gRPC's threads inherit the blocked signals.
  CancelOnSignal cancel(&ctx);
  auto stub = dsv2::v1::Inference::NewStub(grpc::CreateChannel(*endpoint, *std::move(credentials)));

  std::ostream& stream = json_out ? std::cerr : std::cout;
  std::vector<int32_t> output_ids;
  std::string text;
  nlohmann::json logprobs_json = nlohmann::json::array();
  dsv2::v1::GenerateResponse final_chunk;
  std::unique_ptr<grpc::ClientReader<dsv2::v1::GenerateResponse>> reader =
      stub->Generate(&ctx, req);
  dsv2::v1::GenerateResponse chunk;
  while (reader->Read(&chunk)) {
    output_ids.insert(output_ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (!chunk.text().empty()) {
      text += chunk.text();
      stream << chunk.text() << std::flush;
    }
    for (const dsv2::v1::TokenLogprob& lp : chunk.logprobs()) {
      nlohmann::json top = nlohmann::json::array();
      for (const dsv2::v1::TopLogprob& t : lp.top()) {
        top.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}});
      }
      logprobs_json.push_back(
          {{"token_id", lp.token_id()}, {"logprob", lp.logprob()}, {"top", top}});
    }
    if (chunk.finish_reason() != dsv2::v1::FINISH_REASON_UNSPECIFIED) final_chunk = chunk;
  }
  const grpc::Status status = reader->Finish();
  cancel.Finish();
  if (!text.empty() || status.ok()) stream << "\n" << std::flush;
  if (cancel.signal() != 0) {
    std::cerr << "dsv2 generate: cancelled (" << strsignal(cancel.signal()) << ")\n";
    return 128 + cancel.signal();
  }
  if (!status.ok()) {
    std::cerr << "dsv2 generate: "
              << absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))
              << ": " << status.error_message() << "\n";
    return 1;
  }
  if (json_out) {
    const dsv2::v1::Usage& u = final_chunk.usage();
    nlohmann::json j;
    j["prompt_ids"] =
        std::vector<int32_t>(final_chunk.prompt_ids().begin(), final_chunk.prompt_ids().end());
    j["output_ids"] = output_ids;
    j["text"] = text;
    j["seed"] = u.seed();
    j["finish_reason"] = FinishReasonName(final_chunk.finish_reason());
    j["usage"] = {{"prompt_tokens", u.prompt_tokens()},
                  {"completion_tokens", u.completion_tokens()},
                  {"queue_time_seconds", u.queue_time_seconds()},
                  {"time_to_first_token_seconds", u.time_to_first_token_seconds()},
                  {"total_time_seconds", u.total_time_seconds()},
                  {"seed", u.seed()}};
    if (req.has_logprobs()) j["logprobs"] = logprobs_json;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"
              << std::flush;
  }
  return 0;
}

}  // namespace dsv2
