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
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "inference.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "base/cli_flags.h"

namespace dsv2 {
namespace {

const std::vector<cli::FlagSpec>& GenerateFlags() {
  static const std::vector<cli::FlagSpec> specs = {
      {"endpoint", false, "HOST:PORT of the coordinator (required)"},
      {"prompt", false, "prompt text (BOS added unless --no-special-tokens)"},
      {"prompt-ids", false, "comma-separated token ids, used verbatim"},
      {"chat", false, "one user message, rendered with the model's chat template"},
      {"system", false, "a system message before --chat's user message"},
      {"max-tokens", false, "tokens to generate (default: the server's, 256 capped by context)"},
      {"temperature", false, "sampling temperature (default: the server's, 1.0; 0 = greedy)"},
      {"top-p", false, "nucleus sampling mass in (0, 1] (default 1)"},
      {"top-k", false, "keep the k most likely tokens (default 0 = all)"},
      {"seed", false, "sampling seed (default: random, reported in --json)"},
      {"ignore-eos", true, "keep generating after EOS"},
      {"stop", false, "stop when the text contains this string (repeat for several)", true},
      {"stop-token-ids", false, "comma-separated token ids that stop generation"},
      {"logprobs", false,
       "report each token's log-probability and the N most likely, N in [0, "
       "20]"},
      {"no-special-tokens", true, "tokenize --prompt without special tokens (no BOS)"},
      {"timeout-s", false, "deadline of the call in seconds (default: none)"},
      {"json", true, "print one JSON object on stdout; stream text to stderr"},
      {"help", true, "show this help"},
  };
  return specs;
}

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

absl::StatusOr<std::optional<int32_t>> OptionalInt32(const cli::ParsedFlags& flags,
                                                     const std::string& name) {
  if (!flags.Get(name)) return std::optional<int32_t>();
  auto v = flags.GetInt(name, 0);
  if (!v.ok()) return v.status();
  if (*v < std::numeric_limits<int32_t>::min() || *v > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", *v, " is out of range"));
  }
  return std::optional<int32_t>(static_cast<int32_t>(*v));
}

absl::StatusOr<std::optional<float>> OptionalFloat(const cli::ParsedFlags& flags,
                                                   const std::string& name) {
  if (!flags.Get(name)) return std::optional<float>();
  auto v = flags.GetDouble(name, 0);
  if (!v.ok()) return v.status();
  return std::optional<float>(static_cast<float>(*v));
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

}  // namespace

int GenerateCommandMain(int argc, char** argv) {
  auto usage = [](absl::string_view msg) {
    std::cerr << "dsv2 generate: " << msg << "\n";
    return 2;
  };
  auto flags = cli::ParseFlags(argc, argv, 2, GenerateFlags());
  if (!flags.ok()) return usage(flags.status().message());
  flags->PreferCommandLine({"prompt", "prompt-ids", "chat"});
  if (flags->GetBool("help")) {
    std::cout << "dsv2 generate flags:\n" << cli::FlagsHelp(GenerateFlags());
    return 0;
  }
  const std::optional<std::string> endpoint = flags->Get("endpoint");
  if (!endpoint || endpoint->empty()) return usage("--endpoint HOST:PORT is required");
  const std::optional<std::string> prompt = flags->Get("prompt");
  const std::optional<std::string> prompt_ids = flags->Get("prompt-ids");
  const std::optional<std::string> chat = flags->Get("chat");
  if (int(prompt.has_value()) + int(prompt_ids.has_value()) + int(chat.has_value()) != 1) {
    return usage("exactly one of --prompt, --prompt-ids and --chat is required");
  }
  const std::optional<std::string> system = flags->Get("system");
  if (system && !chat) return usage("--system needs --chat");
  const bool json_out = flags->GetBool("json");

  dsv2::v1::GenerateRequest req;
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
    if (!ids.ok()) return usage(ids.status().message());
    for (int32_t id : *ids) req.add_prompt_ids(id);
  }
  // Range checks are the server's (INVALID_ARGUMENT names the field); only
  // values that do not parse are usage errors here.
  auto max_tokens = OptionalInt32(*flags, "max-tokens");
  auto top_k = OptionalInt32(*flags, "top-k");
  auto logprobs = OptionalInt32(*flags, "logprobs");
  auto temperature = OptionalFloat(*flags, "temperature");
  auto top_p = OptionalFloat(*flags, "top-p");
  auto timeout_s = flags->GetDouble("timeout-s", 0);
  for (const absl::Status& st : {max_tokens.status(), top_k.status(), logprobs.status(),
                                 temperature.status(), top_p.status(), timeout_s.status()}) {
    if (!st.ok()) return usage(st.message());
  }
  if (*max_tokens) req.set_max_tokens(**max_tokens);
  if (*top_k) req.set_top_k(**top_k);
  if (*logprobs) req.set_logprobs(**logprobs);
  if (*temperature) req.set_temperature(**temperature);
  if (*top_p) req.set_top_p(**top_p);
  if (auto s = flags->Get("seed")) {
    uint64_t seed;
    if (!absl::SimpleAtoi(*s, &seed)) return usage("--seed must be an unsigned integer");
    req.set_seed(seed);
  }
  req.set_ignore_eos(flags->GetBool("ignore-eos"));
  for (const std::string& s : flags->GetAll("stop")) req.add_stop(s);
  if (auto s = flags->Get("stop-token-ids")) {
    auto ids = ParseIdList("stop-token-ids", *s);
    if (!ids.ok()) return usage(ids.status().message());
    for (int32_t id : *ids) req.add_stop_token_ids(id);
  }
  if (flags->GetBool("no-special-tokens")) req.set_add_special_tokens(false);
  req.set_return_prompt_ids(json_out);
  if (flags->Get("timeout-s") && !(*timeout_s > 0)) return usage("--timeout-s must be > 0");

  grpc::ClientContext ctx;
  if (flags->Get("timeout-s")) {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(*timeout_s)));
  }
  // Before the channel: gRPC's threads inherit the blocked signals.
  CancelOnSignal cancel(&ctx);
  auto stub = dsv2::v1::Inference::NewStub(
      grpc::CreateChannel(*endpoint, grpc::InsecureChannelCredentials()));

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
