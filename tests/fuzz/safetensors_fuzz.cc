// libFuzzer target: the safetensors file parser (header length, JSON header,
// entries, offsets) on arbitrary file images. Every tensor it accepts must
// lie inside the image.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "model/safetensors_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes: ASan sees any read past the image.
  std::vector<std::byte> image(size);
  if (size > 0) std::memcpy(image.data(), data, size);
  auto views = dsv2::safetensors_internal::ParseImage("fuzz.safetensors", image.data(), size);
  if (views.ok()) {
    for (const dsv2::TensorView& v : *views) {
      const std::byte* begin = image.data();
      if (v.data < begin || v.data + v.num_bytes > begin + size) std::abort();
      // Touch the first and last byte of each tensor.
      if (v.num_bytes > 0) {
        volatile std::byte first = v.data[0], last = v.data[v.num_bytes - 1];
        (void)first;
        (void)last;
      }
    }
  }
  return 0;
}
