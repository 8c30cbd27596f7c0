// Test helper: copies a conformance fixture checkpoint into a temp directory
// as one model.safetensors, letting the test edit the tensor list first
// (drop a tensor, change a shape, convert the dtype).
#ifndef DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_
#define DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "tests/common/conformance_checkpoint.h"

namespace dsv2::testing_util {

inline std::string RewriteCheckpoint(const std::string& variant, const std::string& name,
                                     const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  auto src = Checkpoint::OpenDir(FixtureDir(variant));
  EXPECT_TRUE(src.ok()) << src.status();
  std::vector<TensorToWrite> tensors;
  if (src.ok()) {
    for (const std::string& n : (*src)->Names()) {
      const TensorView* t = (*src)->Find(n);
      tensors.push_back({n, t->dtype, t->shape,
                         std::string(reinterpret_cast<const char*>(t->data), t->num_bytes)});
    }
  }
  edit(tensors);
  const std::string dir = ::testing::TempDir() + "/dsv2_rewrite_" + name;
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(FixtureDir(variant) + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

// Converts every f32 tensor to f16 (round to nearest even).
inline void ConvertF32ToF16(std::vector<TensorToWrite>& tensors) {
  for (TensorToWrite& x : tensors) {
    if (x.dtype != DType::kF32) continue;
    const size_t n = x.bytes.size() / 4;
    std::string out(n * 2, '\0');
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, x.bytes.data() + 4 * i, 4);
      const _Float16 h = static_cast<_Float16>(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    x.bytes = std::move(out);
    x.dtype = DType::kF16;
  }
}

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_CHECKPOINT_REWRITE_H_
