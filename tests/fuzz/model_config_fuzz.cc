// libFuzzer target: config.json parsing and validation on arbitrary text.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = dsv2::ParseModelConfig(text);
  if (config.ok()) {
    // What the engine derives from an accepted config must be computable.
    (void)config->fingerprint.size();
  }
  return 0;
}
