#include "attention_service/latent_cache.h"

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

TEST(LatentCacheTest, ReserveGrowsBlockTableAndReleaseReturnsBlocks) {
  LatentCache cache(/*num_layers=*/3, /*latent_dim=*/576, DType::kBF16, /*num_blocks=*/4);
  EXPECT_EQ(cache.bytes_per_token(), 3u * 576 * 2);
  SequenceCache a;
  ASSERT_TRUE(cache.Reserve(a, 1).ok());
  EXPECT_EQ(a.blocks.size(), 1u);
  ASSERT_TRUE(cache.Reserve(a, kLatentBlockTokens + 1).ok());
  EXPECT_EQ(a.blocks.size(), 2u);
  EXPECT_EQ(cache.free_blocks(), 2);
  cache.Release(a);
  EXPECT_TRUE(a.blocks.empty());
  EXPECT_EQ(cache.free_blocks(), 4);
}

TEST(LatentCacheTest, FullCacheIsResourceExhaustedAndUnchanged) {
  LatentCache cache(2, 8, DType::kF32, 2);
  SequenceCache a;
  ASSERT_TRUE(cache.Reserve(a, kLatentBlockTokens).ok());
  const absl::Status st = cache.Reserve(a, 3 * kLatentBlockTokens);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.blocks.size(), 1u);
  EXPECT_EQ(cache.free_blocks(), 1);
}

TEST(LatentCacheTest, RowsOfOneBlockAndLayerFormAContiguousSlab) {
  LatentCache cache(2, 4, DType::kF32, 2);
  SequenceCache a;
  ASSERT_TRUE(cache.Reserve(a, 2).ok());
  const int32_t b = a.blocks[0];
  EXPECT_EQ(cache.Row(b, 1, 1) - cache.Row(b, 1, 0), 16);
  EXPECT_EQ(cache.Row(b, 1, 0), cache.Slab(b, 1));
}

}  // namespace
}  // namespace dsv2
