// AMX kernels (CpuIsa::kAmx): bf16 weights times bf16-exact x
// (XValues::kBf16Exact, the activations of bf16 models) on AMX-BF16 tiles,
// for every M including the GEMV (M = 1). Every other operand combination
// (f32 weights, bf16 weights with kF32 x) is GemmBlockAvx512's.
//
// Formulation: Y^T = W X^T, so the weights are the A operand as checkpoints
// store them (16 rows of W x 32 consecutive k = one A tile, 64 bytes per
// row, no repacking) and x is the B operand: the block's x rows, rounded to
// bf16, are packed per 16-row m-tile as P[p][m] = (x[m][2p], x[m][2p+1])
// (one 32-bit pair per m; B tile row r of k-block b is P[16 b + r][0, mc)).
// C tiles are 16 n x mc m, f32, written to Y transposed.
//
// Reduction pattern, per Y element: one f32 accumulator (a C tile element),
// starting at zero, to which TDPBF16PS adds the 32-element k-blocks in
// ascending order; a K % 32 tail is one more TDPBF16PS on zero-padded x and
// w. The tile element's arithmetic does not involve any other row or column
// of the tile, so the result is the same whatever M, the tile shape (mc),
// the element's place in the tile or the thread count (row invariance,
// cpu.h). TDPBF16PS treats bf16 denormal inputs as zero and flushes
// denormal results; how it rounds inside one 32-element step is the
// hardware's (it matches neither a sequential f32 sum nor VDPBF16PS), so
// this ISA's bits are defined per CPU family, like kAvx512Bf16's.
//
// Tiles: 0-3 accumulators C[nt][mt] (nt, mt < 2), 4-5 A (one per n-tile),
// 6-7 B (one per m-tile): 2 x 2 C tiles per k-step when the block has 32
// rows, 2 x 1 otherwise (the GEMV). Tile data exists only inside
// GemmBlockAmx: it configures the tiles on entry and releases them on exit.
//
// No file-wide -mamx*: each function carries DSV2_AMX and has internal
// linkage (see gemm_internal.h). This file is only compiled, never run, on
// CPUs without AMX; gemm.cc never calls it there, and isa.cc asks Linux for
// the tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM) before reporting
// kAmx as supported.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_internal.h"

#define DSV2_AMX __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))

namespace dsv2::kernels::internal {
namespace {

constexpr size_t kTileRows = 16;  // n rows of an A / C tile, m columns of a B tile
constexpr size_t kBlockK = 32;    // bf16 elements of k per A row / B tile

// The LDTILECFG memory operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Tiles for m-tiles of mc columns (1 <= mc <= 16).
DSV2_AMX void ConfigureTiles(size_t mc) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = kTileRows;
  for (int t = 0; t < 4; ++t) cfg.colsb[t] = static_cast<uint16_t>(mc * 4);  // C: mc f32
  for (int t = 4; t < 6; ++t) cfg.colsb[t] = kBlockK * 2;                    // A: 32 bf16
  for (int t = 6; t < 8; ++t) cfg.colsb[t] = static_cast<uint16_t>(mc * 4);  // B: mc pairs
  // GCC 12 does not see LDTILECFG read the whole struct and drops the stores
  // above as dead; the barrier keeps them.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

DSV2_AMX void ReleaseTiles() { _tile_release(); }

// Where one n-tile's A tiles come from: full k-blocks at base + 32 b (row
// stride `stride` bytes), the zero-padded tail block (if K % 32) at tail.
struct ASource {
  const uint16_t* base;
  size_t stride;
  const uint16_t* tail;
  size_t tail_stride;
};

// C[nt][mt] += A[nt] B[mt] over every k-block, stored to c[nt][mt]
// ([16][mc] f32, row stride mc). b[mt] is an m-tile's packed x.
template <int NT, int MT>
DSV2_AMX void TileKernel(const ASource* a, const uint32_t* const* b, size_t mc, size_t full_blocks,
                         bool has_tail, float* const (*c)[2]) {
  const size_t ldb = mc * 4;
  _tile_zero(0);
  if constexpr (MT == 2) _tile_zero(1);
  if constexpr (NT == 2) _tile_zero(2);
  if constexpr (NT == 2 && MT == 2) _tile_zero(3);
  const size_t blocks = full_blocks + (has_tail ? 1 : 0);
  for (size_t kb = 0; kb < blocks; ++kb) {
    const bool tail = kb == full_blocks;
    _tile_loadd(4, tail ? a[0].tail : a[0].base + kb * kBlockK,
                tail ? a[0].tail_stride : a[0].stride);
    _tile_loadd(6, b[0] + kb * kTileRows * mc, ldb);
    if constexpr (MT == 2) _tile_loadd(7, b[1] + kb * kTileRows * mc, ldb);
    if constexpr (NT == 2) {
      _tile_loadd(5, tail ? a[1].tail : a[1].base + kb * kBlockK,
                  tail ? a[1].tail_stride : a[1].stride);
    }
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (MT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NT == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NT == 2 && MT == 2) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c[0][0], ldb);
  if constexpr (MT == 2) _tile_stored(1, c[0][1], ldb);
  if constexpr (NT == 2) _tile_stored(2, c[1][0], ldb);
  if constexpr (NT == 2 && MT == 2) _tile_stored(3, c[1][1], ldb);
}

// Per-thread scratch, reused across calls.
struct Scratch {
  std::vector<uint16_t> a_pad;  // 2 n-tiles of < 16 rows, zero-padded: [2][16][Kp]
  alignas(64) uint16_t a_tail[2][kTileRows * kBlockK];
  alignas(64) float c[2][2][kTileRows * kTileRows];
};
thread_local Scratch tls_scratch;

size_t PaddedK(size_t K) { return (K + kBlockK - 1) / kBlockK * kBlockK; }

}  // namespace

size_t AmxPackedXWords(size_t M, size_t K) { return M * PaddedK(K) / 2; }

void PackXForAmx(const float* x, size_t ldx, size_t M, size_t K, size_t tile_begin, size_t tile_end,
                 uint32_t* packed) {
  const size_t Kp = PaddedK(K);
  for (size_t t = tile_begin; t < tile_end; ++t) {
    const size_t m0 = t * kTileRows;
    const size_t mc = M - m0 < kTileRows ? M - m0 : kTileRows;
    uint32_t* p = packed + m0 * Kp / 2;
    for (size_t m = 0; m < mc; ++m) {
      const float* row = x + (m0 + m) * ldx;
      size_t k = 0;
      for (; k + 2 <= K; k += 2) {
        p[k / 2 * mc + m] = uint32_t{F32ToBf16(row[k])} | uint32_t{F32ToBf16(row[k + 1])} << 16;
      }
      if (k < K) {
        p[k / 2 * mc + m] = F32ToBf16(row[k]);
        k += 2;
      }
      for (; k < Kp; k += 2) p[k / 2 * mc + m] = 0;
    }
  }
}

void GemmBlockAmx(const GemmOperands& op, size_t m_begin, size_t m_end, size_t n_begin,
                  size_t n_end) {
  if (op.w_dtype != DType::kBF16 || !op.x_bf16_exact) {
    GemmBlockAvx512(op, m_begin, m_end, n_begin, n_end);
    return;
  }
  // REQUIRES (gemm.cc): op.x_packed holds all of x; m_begin % 16 == 0.
  const size_t rows = m_end - m_begin;
  const size_t K = op.K;
  float* y = op.y + m_begin * op.ldy;
  if (K == 0) {
    for (size_t m = 0; m < rows; ++m) {
      for (size_t n = n_begin; n < n_end; ++n) y[m * op.ldy + n] = 0.0f;
    }
    return;
  }
  const uint16_t* w = static_cast<const uint16_t*>(op.w);
  const size_t full_blocks = K / kBlockK;
  const bool has_tail = K % kBlockK != 0;
  const size_t Kp = PaddedK(K);
  Scratch& s = tls_scratch;

  // The block's m-tiles (t = 0 is x row m_begin); the last one has
  // rows % 16 rows when that is not 0.
  const size_t m_tiles = (rows + kTileRows - 1) / kTileRows;
  const auto packed = [&](size_t t) { return op.x_packed + (m_begin + t * kTileRows) * Kp / 2; };

  const size_t full_m_tiles = rows / kTileRows;
  const size_t edge_mc = rows % kTileRows;
  float* const c[2][2] = {{s.c[0][0], s.c[0][1]}, {s.c[1][0], s.c[1][1]}};

  // Y[m0 + m, n0 + n] = C[n][m] for the valid n < nr, m < mc.
  const auto store = [&](const float* ct, size_t mc, size_t m0, size_t n0, size_t nr) {
    for (size_t n = 0; n < nr; ++n) {
      for (size_t m = 0; m < mc; ++m) y[(m0 + m) * op.ldy + n0 + n] = ct[n * mc + m];
    }
  };

  // One pass per m-tile width (16, then the edge): LDTILECFG zeroes the
  // tiles, so the width changes only between passes.
  for (int pass = 0; pass < 2; ++pass) {
    const size_t mc = pass == 0 ? kTileRows : edge_mc;
    const size_t t_begin = pass == 0 ? 0 : full_m_tiles;
    const size_t t_end = pass == 0 ? full_m_tiles : (edge_mc != 0 ? m_tiles : full_m_tiles);
    if (t_begin == t_end) continue;
    ConfigureTiles(mc);
    for (size_t n0 = n_begin; n0 < n_end; n0 += 2 * kTileRows) {
      const size_t n_tiles = n_end - n0 > kTileRows ? 2 : 1;
      ASource a[2];
      size_t nr[2];
      for (size_t i = 0; i < n_tiles; ++i) {
        const size_t nt0 = n0 + i * kTileRows;
        nr[i] = n_end - nt0 < kTileRows ? n_end - nt0 : kTileRows;
        if (nr[i] < kTileRows) {
          // A partial n-tile: its rows copied into zero-padded [16][Kp].
          if (s.a_pad.size() < 2 * kTileRows * Kp) s.a_pad.resize(2 * kTileRows * Kp);
          uint16_t* pad = s.a_pad.data() + i * kTileRows * Kp;
          std::memset(pad, 0, kTileRows * Kp * sizeof(uint16_t));
          for (size_t r = 0; r < nr[i]; ++r) {
            std::memcpy(pad + r * Kp, w + (nt0 + r) * op.ldw, K * sizeof(uint16_t));
          }
          a[i] = ASource{pad, Kp * 2, pad + full_blocks * kBlockK, Kp * 2};
        } else {
          uint16_t* tail = s.a_tail[i];
          if (has_tail) {
            const size_t kt = K - full_blocks * kBlockK;
            std::memset(tail, 0, sizeof(s.a_tail[i]));
            for (size_t r = 0; r < kTileRows; ++r) {
              std::memcpy(tail + r * kBlockK, w + (nt0 + r) * op.ldw + full_blocks * kBlockK,
                          kt * sizeof(uint16_t));
            }
          }
          a[i] = ASource{w + nt0 * op.ldw, op.ldw * 2, tail, kBlockK * 2};
        }
      }
      for (size_t t = t_begin; t < t_end; t += 2) {
        const size_t m_tiles_here = pass == 0 && t + 1 < t_end ? 2 : 1;
        const uint32_t* b[2] = {packed(t), m_tiles_here == 2 ? packed(t + 1) : nullptr};
        if (n_tiles == 2 && m_tiles_here == 2) {
          TileKernel<2, 2>(a, b, mc, full_blocks, has_tail, c);
        } else if (n_tiles == 2) {
          TileKernel<2, 1>(a, b, mc, full_blocks, has_tail, c);
        } else if (m_tiles_here == 2) {
          TileKernel<1, 2>(a, b, mc, full_blocks, has_tail, c);
        } else {
          TileKernel<1, 1>(a, b, mc, full_blocks, has_tail, c);
        }
        for (size_t i = 0; i < n_tiles; ++i) {
          for (size_t j = 0; j < m_tiles_here; ++j) {
            store(c[i][j], mc, (t + j) * kTileRows, n0 + i * kTileRows, nr[i]);
          }
        }
      }
    }
    ReleaseTiles();
  }
}

}  // namespace dsv2::kernels::internal
