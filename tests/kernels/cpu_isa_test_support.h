// What the kernel tests share: every CpuIsa, the fixture of tests run once
// per ISA (skipped where this CPU lacks it) and the parameter's name.
#ifndef DSV2_TESTS_KERNELS_CPU_ISA_TEST_SUPPORT_H_
#define DSV2_TESTS_KERNELS_CPU_ISA_TEST_SUPPORT_H_

#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu.h"

namespace dsv2::kernels {

inline constexpr CpuIsa kAllIsas[] = {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512Bf16,
                                      CpuIsa::kAmx};

inline std::string IsaParamName(const ::testing::TestParamInfo<CpuIsa>& info) {
  return std::string(CpuIsaName(info.param));
}

// Parameterised by the ISA; SetUp skips an ISA this CPU lacks.
class CpuIsaTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    if (!CpuSupports(GetParam())) {
      GTEST_SKIP() << "this CPU does not support " << CpuIsaName(GetParam());
    }
  }
  CpuContext Context(ThreadPool* pool = nullptr) const { return CpuContext{GetParam(), pool}; }
};

}  // namespace dsv2::kernels

#endif  // DSV2_TESTS_KERNELS_CPU_ISA_TEST_SUPPORT_H_
