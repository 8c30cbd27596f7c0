// Run-time CPU feature detection and ISA naming (kernels/cpu.h).
//
// Features are read from CPUID and checked with XGETBV against the register
// state the OS saves (AVX: XMM+YMM; AVX-512: opmask+ZMM; AMX: tile config +
// tile data), so a feature reported here is usable. (Read directly rather
// than through __builtin_cpu_supports: GCC's and clang's know different
// feature names, and clang 14 none for F16C or AMX.)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
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

// CPUID leaf `leaf`, subleaf `sub`: {eax, ebx, ecx, edx}; zeros when the
// leaf is beyond the CPU's maximum.
struct CpuidRegs {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};
CpuidRegs Cpuid(unsigned leaf, unsigned sub) {
  CpuidRegs r;
  if (static_cast<unsigned>(__get_cpuid_max(leaf & 0x80000000u, nullptr)) < leaf) return r;
  __cpuid_count(leaf, sub, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

// XCR0: the register state components the OS enabled (needs OSXSAVE).
uint64_t Xcr0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

bool Bit(unsigned reg, int bit) { return (reg >> bit) & 1u; }

const CpuFeatures& Features() {
  static const CpuFeatures features = [] {
    CpuFeatures f{};
    const CpuidRegs l1 = Cpuid(1, 0);
    const CpuidRegs l7 = Cpuid(7, 0);
    const CpuidRegs l7s1 = Cpuid(7, 1);
    const bool osxsave = Bit(l1.ecx, 27);
    const uint64_t xcr0 = osxsave ? Xcr0() : 0;
    const bool os_avx = (xcr0 & 0x6) == 0x6;                 // XMM, YMM
    const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
    const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG, XTILEDATA
    f.avx2_fma = os_avx && Bit(l1.ecx, 28) /*AVX*/ && Bit(l7.ebx, 5) /*AVX2*/ &&
                 Bit(l1.ecx, 12) /*FMA*/ && Bit(l1.ecx, 29) /*F16C*/;
    f.avx512_bf16 = f.avx2_fma && os_avx512 && Bit(l7.ebx, 16) /*AVX512F*/ &&
                    Bit(l7.ebx, 30) /*AVX512BW*/ && Bit(l7.ebx, 31) /*AVX512VL*/ &&
                    Bit(l7s1.eax, 5) /*AVX512_BF16*/ && Bit(l7.ecx, 11) /*AVX512_VNNI*/;
    f.amx_bf16 = f.avx512_bf16 && os_amx && Bit(l7.edx, 24) /*AMX-TILE*/ &&
                 Bit(l7.edx, 22) /*AMX-BF16*/ && RequestAmxPermission();
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
