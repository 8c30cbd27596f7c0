#include "attention_service/latent_cache.h"

#include <new>

#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::StatusOr<std::unique_ptr<LatentCache>> LatentCache::Create(int64_t num_layers,
                                                                 int64_t latent_dim, DType dtype,
                                                                 int64_t num_blocks) {
  if (num_layers <= 0 || latent_dim <= 0 || num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("latent cache: bad size (layers ", num_layers,
                                                   ", latent_dim ", latent_dim, ", blocks ",
                                                   num_blocks, ")"));
  }
  size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(num_blocks), static_cast<size_t>(num_layers),
                             &bytes) ||
      __builtin_mul_overflow(bytes, static_cast<size_t>(kLatentBlockTokens * latent_dim), &bytes) ||
      __builtin_mul_overflow(bytes, DTypeSize(dtype), &bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("latent cache of ", num_blocks, " blocks overflows the address space"));
  }
  // The pages stay untouched until written: this reserves address space.
  std::unique_ptr<std::byte[]> storage(new (std::nothrow) std::byte[bytes]);
  if (storage == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("latent cache: cannot allocate ", bytes, " bytes for ", num_blocks, " blocks"));
  }
  return std::unique_ptr<LatentCache>(
      new LatentCache(num_layers, latent_dim, dtype, num_blocks, std::move(storage)));
}

LatentCache::LatentCache(int64_t num_layers, int64_t latent_dim, DType dtype, int64_t num_blocks)
    : LatentCache(num_layers, latent_dim, dtype, num_blocks,
                  std::unique_ptr<std::byte[]>(
                      new std::byte[static_cast<size_t>(num_blocks) * num_layers *
                                    kLatentBlockTokens * latent_dim * DTypeSize(dtype)])) {}

LatentCache::LatentCache(int64_t num_layers, int64_t latent_dim, DType dtype, int64_t num_blocks,
                         std::unique_ptr<std::byte[]> storage)
    : num_layers_(num_layers),
      latent_dim_(latent_dim),
      dtype_(dtype),
      num_blocks_(num_blocks),
      row_bytes_(static_cast<size_t>(latent_dim) * DTypeSize(dtype)),
      storage_(std::move(storage)) {
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::Status LatentCache::Reserve(SequenceCache& seq, int64_t total_tokens) {
  const int64_t need = BlocksForTokens(total_tokens) - static_cast<int64_t>(seq.blocks.size());
  if (need <= 0) return absl::OkStatus();
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("latent cache: need ", need, " more blocks of ", kLatentBlockTokens,
                     " tokens for ", total_tokens, " tokens; ", free_blocks(), " of ",
                     num_blocks_, " free"));
  }
  for (int64_t i = 0; i < need; ++i) {
    seq.blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void LatentCache::Release(SequenceCache& seq) {
  for (int32_t b : seq.blocks) free_.push_back(b);
  seq.blocks.clear();
  seq.num_tokens = 0;
}

}  // namespace dsv2
