// LatentCache: the paged MLA latent cache of one attention node (DESIGN.md
// section 6, MODEL_SPEC.md section 5).
//
// Per token and layer the cache holds latent_dim = C + R values in the
// activation dtype: the kv_a_layernorm output c (C values) followed by the
// rotated k_pe (R values, interleaved pairs). Storage is a pool of
// fixed-size blocks of kLatentBlockTokens tokens; a block holds every layer:
//
//   block b: [num_layers][kLatentBlockTokens][latent_dim] x dtype size bytes
//
// so the rows of one (block, layer) form one contiguous
// [kLatentBlockTokens, latent_dim] slab that attention reads as a GEMM
// operand. Attention reduces over keys block by block from position 0, so
// the block size is part of the numerics: it is a constant, the same on
// every node.
//
// A sequence owns a SequenceCache (its block table and token count).
// Thread-safety: one thread (the engine's) allocates and frees; rows of
// distinct tokens may be written concurrently.
#ifndef DSV2_ATTENTION_SERVICE_LATENT_CACHE_H_
#define DSV2_ATTENTION_SERVICE_LATENT_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace dsv2 {

inline constexpr int64_t kLatentBlockTokens = 64;

struct SequenceCache {
  std::vector<int32_t> blocks;  // block table: token t lives in blocks[t / kLatentBlockTokens]
  int64_t num_tokens = 0;       // tokens whose rows are complete in every layer
};

class LatentCache {
 public:
  // REQUIRES: num_layers, latent_dim, num_blocks > 0. Aborts if the pool
  // cannot be allocated; use Create for sizes that come from users.
  LatentCache(int64_t num_layers, int64_t latent_dim, DType dtype, int64_t num_blocks);
  // InvalidArgument for non-positive sizes, ResourceExhausted when the pool's
  // byte size overflows or cannot be allocated.
  static absl::StatusOr<std::unique_ptr<LatentCache>> Create(int64_t num_layers,
                                                             int64_t latent_dim, DType dtype,
                                                             int64_t num_blocks);

  static int64_t BlocksForTokens(int64_t tokens) {
    return (tokens + kLatentBlockTokens - 1) / kLatentBlockTokens;
  }
  // Bytes of one token's rows over all layers.
  size_t bytes_per_token() const { return row_bytes_ * num_layers_; }

  // Grows `seq`'s block table to hold `total_tokens` tokens.
  // ResourceExhausted (and no change) when the pool has too few free blocks.
  absl::Status Reserve(SequenceCache& seq, int64_t total_tokens);
  // Returns all of `seq`'s blocks to the pool and empties it.
  void Release(SequenceCache& seq);

  // The row of token `slot` of `block` in `layer` (latent_dim values).
  std::byte* Row(int32_t block, int64_t layer, int64_t slot) {
    return storage_.get() + ((static_cast<size_t>(block) * num_layers_ + layer) *
                                 kLatentBlockTokens + slot) * row_bytes_;
  }
  // The [kLatentBlockTokens, latent_dim] slab of (block, layer).
  const std::byte* Slab(int32_t block, int64_t layer) const {
    return storage_.get() +
           (static_cast<size_t>(block) * num_layers_ + layer) * kLatentBlockTokens * row_bytes_;
  }

  DType dtype() const { return dtype_; }
  int64_t latent_dim() const { return latent_dim_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t capacity_tokens() const { return num_blocks_ * kLatentBlockTokens; }

 private:
  LatentCache(int64_t num_layers, int64_t latent_dim, DType dtype, int64_t num_blocks,
              std::unique_ptr<std::byte[]> storage);

  const int64_t num_layers_;
  const int64_t latent_dim_;
  const DType dtype_;
  const int64_t num_blocks_;
  const size_t row_bytes_;
  std::unique_ptr<std::byte[]> storage_;  // uninitialised until written
  std::vector<int32_t> free_;  // LIFO free list
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_LATENT_CACHE_H_
