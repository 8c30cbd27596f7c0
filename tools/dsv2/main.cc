// `dsv2`: the command-line tool. Subcommands:
//   dsv2 run --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [...]
//   dsv2 make-random-model --out DIR [--preset v2-tiny|v2-lite-tiny|v2-lite] [--seed N]
//   dsv2 up [--model DIR] [--attention-nodes N] [--expert-shards M] [...]
//   dsv2 generate --endpoint HOST:PORT (--prompt TEXT | --prompt-ids 1,2,3 | --chat TEXT) [...]
// Exit codes: 0 success, 2 usage error, 1 any other error (one line on stderr).
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "base/cli_flags.h"
#include "tools/dsv2/generate_command.h"
#include "tools/dsv2/random_model.h"
#include "tools/dsv2/run_command.h"
#include "tools/dsv2/up_command.h"

namespace {

constexpr char kUsage[] =
    "usage: dsv2 <command> [flags]\n"
    "commands:\n"
    "  run                 generate from a prompt with the single-process engine\n"
    "  make-random-model   write a small random checkpoint (weights are random: text is noise)\n"
    "  up                  start a local cluster (coordinator, expert shards, attention nodes)\n"
    "  generate            stream one generation from a cluster's endpoint\n"
    "run `dsv2 <command> --help` for its flags\n";

int MakeRandomModelMain(int argc, char** argv) {
  const std::vector<dsv2::cli::FlagSpec> specs = {
      {"out", false, "output directory (required)"},
      {"preset", false, "v2-tiny (default), v2-lite-tiny, or v2-lite (real V2-Lite dimensions)"},
      {"seed", false, "random seed (default 0)"},
      {"num-layers", false, "override the preset's layer count"},
      {"dtype", false, "bf16 (default) or f32"},
      {"tokenizer-dir", false, "tokenizer to copy (default: the shipped one, in dsv2's data dir)"},
      {"help", true, "show this help"},
  };
  auto flags = dsv2::cli::ParseFlags(argc, argv, 2, specs);
  if (!flags.ok()) {
    std::cerr << "dsv2 make-random-model: " << flags.status().message() << "\n"
              << dsv2::cli::FlagsHelp(specs);
    return 2;
  }
  if (flags->GetBool("help")) {
    std::cout << "dsv2 make-random-model flags:\n" << dsv2::cli::FlagsHelp(specs);
    return 0;
  }
  dsv2::RandomModelOptions o;
  if (!flags->Get("out")) {
    std::cerr << "dsv2 make-random-model: --out is required\n";
    return 2;
  }
  o.out_dir = *flags->Get("out");
  o.preset = flags->Get("preset").value_or("v2-tiny");
  auto seed = flags->GetInt("seed", 0);
  auto layers = flags->GetInt("num-layers", 0);
  if (!seed.ok() || !layers.ok()) {
    std::cerr << "dsv2 make-random-model: "
              << (!seed.ok() ? seed.status() : layers.status()).message() << "\n";
    return 2;
  }
  o.seed = static_cast<uint64_t>(*seed);
  o.num_layers = *layers;
  const std::string dtype = flags->Get("dtype").value_or("bf16");
  if (dtype != "bf16" && dtype != "f32") {
    std::cerr << "dsv2 make-random-model: --dtype must be bf16 or f32\n";
    return 2;
  }
  o.dtype = dtype == "bf16" ? dsv2::DType::kBF16 : dsv2::DType::kF32;
  o.tokenizer_dir = flags->Get("tokenizer-dir").value_or("");  // "": the shipped one
  const absl::Status st = dsv2::MakeRandomModel(o);
  if (!st.ok()) {
    std::cerr << "dsv2 make-random-model: " << st.message() << "\n";
    return st.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::cerr << "wrote random " << o.preset << " model to " << o.out_dir
            << " (random weights: generated text is noise)\n";
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "run") return dsv2::RunCommandMain(argc, argv);
  if (cmd == "make-random-model") return MakeRandomModelMain(argc, argv);
  if (cmd == "up") return dsv2::UpCommandMain(argc, argv);
  if (cmd == "generate") return dsv2::GenerateCommandMain(argc, argv);
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
