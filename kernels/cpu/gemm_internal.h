// Private to kernels/cpu: the per-ISA block kernels behind Gemm/Gemv.
//
// Each ISA file (gemm_scalar.cc, gemm_avx2.cc, gemm_avx512.cc) exports one
// function that computes a rectangle of Y. gemm.cc checks arguments, picks
// the rectangles and spreads them over the ThreadPool.
//
// Row invariance (see cpu.h) is each block function's job: every Y element
// it writes is computed by the same per-ISA arithmetic sequence (a fixed
// set of lane accumulators over K, the same zero-padded tail, the same
// horizontal-sum tree) whatever the rectangle's size or position, so tiling
// and threading cannot change a bit.
//
// The vector files are compiled without global ISA flags: every function
// that uses AVX2 / AVX-512 instructions carries its own
// __attribute__((target(...))) and has internal linkage, so no inline or
// template code compiled for a newer ISA can leak into the rest of the
// program through COMDAT folding.
#ifndef DSV2_KERNELS_CPU_GEMM_INTERNAL_H_
#define DSV2_KERNELS_CPU_GEMM_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"

namespace dsv2::kernels::internal {

// The operands of one Gemm call (see cpu.h for shapes and strides).
struct GemmOperands {
  const float* x;  // [M, K], row stride ldx.
  size_t ldx;
  const void* w;  // [N, K] in w_dtype (kF32 or kBF16), row stride ldw.
  DType w_dtype;
  size_t ldw;
  float* y;  // [M, N], row stride ldy.
  size_t ldy;
  size_t K;
  // True when every X value is bf16-representable (XValues::kBf16Exact).
  bool x_bf16_exact = false;
  // kAmx with bf16 weights and bf16-exact x: all M rows of x packed once
  // per call by PackXForAmx (the block function reads its rows from here).
  const uint32_t* x_packed = nullptr;
};

// AMX's x operand (gemm_amx.cc): rows in m-tiles of 16 (the last one
// M % 16 when not 0); m-tile t holds P[p][m] = (bf16 x[16 t + m][2 p],
// bf16 x[16 t + m][2 p + 1]) as one uint32 (low half first) for
// p < Kp / 2, Kp = K rounded up to 32, zero-padded; it starts at
// packed + 16 t * Kp / 2 and has row stride mc (the tile's rows).
size_t AmxPackedXWords(size_t M, size_t K);
// Packs m-tiles [tile_begin, tile_end) of x [M, K] (row stride ldx).
void PackXForAmx(const float* x, size_t ldx, size_t M, size_t K, size_t tile_begin, size_t tile_end,
                 uint32_t* packed);

// Aborts, naming `fn` and the ISA, when this CPU lacks `isa`: the check
// every kernel entry makes before dispatching (callers use ResolveCpuIsa).
void CheckIsaSupported(const char* fn, CpuIsa isa);

// Computes Y[m, n] for m in [m_begin, m_end), n in [n_begin, n_end).
// Single-threaded; safe to call concurrently on disjoint rectangles.
// REQUIRES: the ISA is supported by this CPU (callers check CpuSupports).
using GemmBlockFn = void (*)(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                             size_t n_end);

void GemmBlockScalar(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end);
void GemmBlockAvx2(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                   size_t n_end);
void GemmBlockAvx512(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                     size_t n_end);
// kAmx: AMX-BF16 tiles for bf16 weights x bf16-exact x, else GemmBlockAvx512.
void GemmBlockAmx(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                  size_t n_end);

// The split of Y into rectangles on the pool, shared by Gemm and QGemm
// (gemm.cc). Only rectangles of Y are split (never K), so the split changes
// no bit. `block(m_begin, m_end, n_begin, n_end)` computes one rectangle;
// row_bytes is the size of one weight row (what a column costs to stream).
using RectFn = absl::FunctionRef<void(size_t, size_t, size_t, size_t)>;
// The tile sizes a block function works in, so that the split's rectangles
// are whole tiles (except at the edges of Y).
struct SplitTiles {
  size_t gemv_cols = 8;   // GEMV tile columns
  size_t gemm_cols = 12;  // GEMM column blocks are multiples of this
  size_t gemm_rows = 4;   // GEMM row blocks are multiples of this
  // Bytes of one x row in the block (what a row costs to re-read).
  size_t x_elem_bytes = 4;
};
// The split for the AMX tiles (2 x 2 tiles of 16 x 16; x packed as bf16).
// Row blocks are multiples of 32, so each starts at an m-tile of the
// packed x.
inline constexpr SplitTiles kAmxSplitTiles{32, 32, 32, 2};
// M == 1: chunks of whole GEMV tiles, each reading at least 256 KiB of
// weights. Runs inline without a pool.
void RunGemvSplit(ThreadPool* pool, size_t N, size_t row_bytes, RectFn block,
                  const SplitTiles& tiles = {});
// M > 1: cache-sized blocks of whole column x row tiles. Runs inline
// without a pool or below 2^18 multiply-adds.
void RunGemmSplit(ThreadPool* pool, size_t M, size_t N, size_t K, size_t row_bytes, RectFn block,
                  const SplitTiles& tiles = {});

}  // namespace dsv2::kernels::internal

#endif  // DSV2_KERNELS_CPU_GEMM_INTERNAL_H_
