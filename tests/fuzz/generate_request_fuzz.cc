// libFuzzer target: the public API's GenerateRequest validation, from
// protobuf bytes as a client sends them: parse, check every field and
// tokenize (PrepareGenerate), then the context and cache limits
// (ApplyLimits), with the shipped demo model's tokenizer and chat template.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "coordinator/generate_request.h"
#include "inference.pb.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace {

struct Demo {
  std::unique_ptr<dsv2::Tokenizer> tokenizer;
  std::unique_ptr<dsv2::ChatTemplate> chat_template;
  dsv2::coordinator::ServedModel model;
};

const Demo& DemoModel() {
  static const Demo* demo = [] {
    auto* d = new Demo;
    auto tok = dsv2::Tokenizer::FromDir(DSV2_SOURCE_DIR "/model/data/demo-stories");
    if (!tok.ok() || !(*tok)->chat_template()) std::abort();
    d->tokenizer = *std::move(tok);
    auto t = dsv2::ChatTemplate::Parse(*d->tokenizer->chat_template());
    if (!t.ok()) std::abort();
    d->chat_template = std::make_unique<dsv2::ChatTemplate>(*std::move(t));
    d->model.context_tokens = 2048;
    d->model.vocab_size = 2256;
    d->model.eos_token_ids = {1};
    d->model.tokenizer = d->tokenizer.get();
    d->model.chat_template = d->chat_template.get();
    return d;
  }();
  return *demo;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dsv2::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const Demo& demo = DemoModel();
  auto prepared = dsv2::coordinator::PrepareGenerate(request, demo.model);
  if (!prepared.ok()) return 0;
  for (int32_t id : prepared->prompt_ids) {
    if (id < 0 || id >= demo.model.vocab_size) std::abort();  // validated means in range
  }
  if (dsv2::coordinator::ApplyLimits(demo.model, 4096, *prepared).ok()) {
    if (!prepared->max_tokens ||
        static_cast<int64_t>(prepared->prompt_ids.size()) + *prepared->max_tokens > 2048) {
      std::abort();
    }
  }
  return 0;
}
