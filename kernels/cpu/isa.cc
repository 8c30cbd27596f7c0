// Run-time CPU feature detection and ISA naming (kernels/cpu.h).
//
// __builtin_cpu_supports (libgcc / compiler-rt cpuinfo) reads CPUID and also
// checks with XGETBV that the OS saves the AVX / AVX-512 register state, so
// a feature it reports is usable.
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu.h"

namespace dsv2::kernels {
namespace {

// This absl build's string_view is its own type, not std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

struct CpuFeatures {
  // AVX2, FMA and F16C (f16 scales of quantized weights): present
  // together on Haswell, AMD Zen and later.
  bool avx2_fma;
  // AVX-512 F (f32 kernels), BW (16-bit masked loads of bf16 tails), VL
  // (the quantized kernels' 128/256-bit steps may use EVEX forms) and BF16
  // (VDPBF16PS) and VNNI (VPDPBUSD, the quantized integer dot product),
  // on top of the AVX2 set: present together on Cooper Lake,
  // Sapphire Rapids and later Intel, and on AMD Zen 4 and later.
  bool avx512_bf16;
  // AMX-TILE and AMX-BF16 on top of the AVX-512 set, and Linux granted this
  // process the tile-data state (which it enables per process, on request).
  bool amx_bf16;
};

// Linux (5.16+): a process must ask for the AMX tile-data state before its
// first tile instruction, or that instruction faults (SIGILL). The request
// covers every thread of the process, present and future.
bool RequestAmxPermission() {
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

const CpuFeatures& Features() {
  static const CpuFeatures features = [] {
    __builtin_cpu_init();
    CpuFeatures f;
    f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                 __builtin_cpu_supports("f16c");
    f.avx512_bf16 = f.avx2_fma && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
    f.amx_bf16 = f.avx512_bf16 && __builtin_cpu_supports("amx-tile") &&
                 __builtin_cpu_supports("amx-bf16") && RequestAmxPermission();
    return f;
  }();
  return features;
}

}  // namespace

std::string_view CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512Bf16:
      return "avx512bf16";
    case CpuIsa::kAmx:
      return "amx";
  }
  return "?";
}

absl::StatusOr<CpuIsa> ParseCpuIsa(std::string_view name) {
  if (name == "auto") return BestCpuIsa();
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (name == CpuIsaName(isa)) return isa;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown CPU ISA \"", Sv(name), "\"; expected one of auto, scalar, avx2, avx512bf16, amx"));
}

bool CpuSupports(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
    case CpuIsa::kAvx2:
      return Features().avx2_fma;
    case CpuIsa::kAvx512Bf16:
      return Features().avx512_bf16;
    case CpuIsa::kAmx:
      return Features().amx_bf16;
  }
  return false;
}

CpuIsa BestCpuIsa() {
  if (CpuSupports(CpuIsa::kAmx)) return CpuIsa::kAmx;
  if (CpuSupports(CpuIsa::kAvx512Bf16)) return CpuIsa::kAvx512Bf16;
  if (CpuSupports(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

absl::StatusOr<CpuIsa> ResolveCpuIsa(std::string_view flag_value) {
  std::string_view name = flag_value;
  std::string_view source = "--cpu_isa";
  if (name.empty()) {
    const char* env = std::getenv("DSV2_CPU_ISA");
    if (env != nullptr && env[0] != '\0') {
      name = env;
      source = "DSV2_CPU_ISA";
    }
  }
  if (name.empty()) return BestCpuIsa();
  absl::StatusOr<CpuIsa> isa = ParseCpuIsa(name);
  if (!isa.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": ", isa.status().message()));
  }
  if (!CpuSupports(*isa)) {
    return absl::FailedPreconditionError(absl::StrCat(
        Sv(source), " asks for CPU ISA ", Sv(CpuIsaName(*isa)),
        ", which this CPU does not support (best available: ", Sv(CpuIsaName(BestCpuIsa())), ")"));
  }
  return *isa;
}

}  // namespace dsv2::kernels
