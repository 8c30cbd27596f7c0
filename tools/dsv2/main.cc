// `dsv2`: the command-line tool. Subcommands:
//   dsv2 run --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [...]
//   dsv2 make-random-model --out DIR [--preset v2-tiny|v2-lite-tiny|v2-lite] [--seed N]
//   dsv2 quantize --model IN --out OUT --weights int8|int4 [--experts-only]
//   dsv2 eval-kld --model DIR (--weights F | --quantized-model DIR) (--text F | --random-tokens N)
//   dsv2 up [--model DIR] [--attention-nodes N] [--expert-shards M] [...]
//   dsv2 generate --endpoint HOST:PORT (--prompt TEXT | --prompt-ids 1,2,3 | --chat TEXT) [...]
// Exit codes: 0 success, 2 usage error, 1 any other error (one line on stderr).
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "base/version.h"
#include "tools/dsv2/eval_kld_command.h"
#include "tools/dsv2/generate_command.h"
#include "tools/dsv2/make_random_model_command.h"
#include "tools/dsv2/quantize_command.h"
#include "tools/dsv2/random_model.h"
#include "tools/dsv2/run_command.h"
#include "tools/dsv2/up_command.h"

namespace {

constexpr char kUsage[] =
    "usage: dsv2 <command> [flags]\n"
    "commands:\n"
    "  run                 generate from a prompt with the single-process engine\n"
    "  make-random-model   write a small random checkpoint (weights are random: text is noise)\n"
    "  quantize            write an int8/int4 copy of a bf16/f16/f32 checkpoint\n"
    "  eval-kld            KL divergence of a quantized model from the model as stored\n"
    "  up                  start a local cluster (coordinator, expert shards, attention nodes)\n"
    "  generate            stream one generation from a cluster's endpoint\n"
    "run `dsv2 <command> --help` for its flags\n";

}  // namespace

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "run") return dsv2::RunCommandMain(argc, argv);
  if (cmd == "make-random-model") return dsv2::MakeRandomModelMain(argc, argv);
  if (cmd == "quantize") return dsv2::QuantizeCommandMain(argc, argv);
  if (cmd == "eval-kld") return dsv2::EvalKldCommandMain(argc, argv);
  if (cmd == "up") return dsv2::UpCommandMain(argc, argv);
  if (cmd == "generate") return dsv2::GenerateCommandMain(argc, argv);
  if (cmd == "--version") {
    std::cout << "dsv2 " << dsv2::VersionString() << "\n";
    return 0;
  }
  if (cmd == "--help" || cmd == "help" || cmd == "-h") {
    std::cout << kUsage;
    return 0;
  }
  std::cerr << "dsv2: unknown command '" << cmd << "'\n" << kUsage;
  return 2;
}

// The libraries report errors as absl::Status; this catches what the
// standard library may still throw (allocation, threads) so the command
// never dies with an uncaught exception.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dsv2: " << e.what() << "\n";
    return 1;
  }
}
