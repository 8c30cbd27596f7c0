#include "attention_service/latent_cache.h"

#include "absl/strings/str_cat.h"

namespace dsv2 {

LatentCache::LatentCache(int64_t num_layers, int64_t latent_dim, DType dtype, int64_t num_blocks)
    : num_layers_(num_layers),
      latent_dim_(latent_dim),
      dtype_(dtype),
      num_blocks_(num_blocks),
      row_bytes_(static_cast<size_t>(latent_dim) * DTypeSize(dtype)),
      storage_(new std::byte[static_cast<size_t>(num_blocks) * num_layers * kLatentBlockTokens *
                             latent_dim * DTypeSize(dtype)]) {
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
