// Read-only, memory-mapped access to a HuggingFace safetensors checkpoint:
// one `model.safetensors`, or shards listed by `model.safetensors.index.json`
// (its "weight_map": tensor name -> shard file name).
//
// Opening parses and validates every header before anything is read:
// 8-byte little-endian header length inside the file (and at most 100 MiB,
// the reference limit); well-formed JSON (no duplicate keys, nesting <= 16);
// every entry has a dtype we support (F32, BF16, F16, I8, U8; other safetensors dtypes
// such as I64 are "unsupported dtype"), a shape of non-negative ints whose
// product does not overflow, and data_offsets [begin, end] with
// shape x dtype size == end - begin; every range lies inside the file's data
// section; non-empty ranges do not overlap (gaps are allowed); names are
// unique across shards; every weight_map value is a plain file name in `dir`
// that exists, and every name in the weight_map exists in the shard it names.
// A tensor in a listed shard that the weight_map omits is kept (transformers
// loads it too); shards the index does not list are not opened.
// "__metadata__" (an object of strings) is skipped. Errors are
// InvalidArgument / NotFound naming the file and the tensor, e.g.
// "model-00001-of-00002.safetensors: tensor 'model.norm.weight': data_offsets
// [10, 9000] end past the data section (8000 bytes)". Nothing is ever read out
// of the mapped range. (A file truncated by someone else while mapped would
// still raise SIGBUS on access; checkpoints are treated as immutable.)
//
// Tensor data stays in the page cache until touched, so a process that reads
// only some tensors (an expert shard reading only its experts) keeps only
// those resident.
//
// Thread-safety: immutable after Open; safe for concurrent readers.
// Ownership: TensorView::data points into a mapping owned by the
// Checkpoint and stays valid as long as the Checkpoint lives.
#ifndef DSV2_MODEL_SAFETENSORS_H_
#define DSV2_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace dsv2 {

struct TensorView {
  std::string name;
  std::string file;  // file name (no directory) of the shard holding it
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // may be unaligned
  size_t num_bytes = 0;

  int64_t num_elements() const;
};

class Checkpoint {
 public:
  // Opens `dir`/model.safetensors.index.json when present, else
  // `dir`/model.safetensors. NotFound when neither exists.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenDir(const std::string& dir);
  // Opens one .safetensors file.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenFile(const std::string& path);

  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;
  // Find + checks: NotFound "<name>: tensor missing from checkpoint" or
  // InvalidArgument "<file>: tensor '<name>' has shape [a, b]; expected [c, d]".
  absl::StatusOr<const TensorView*> Get(std::string_view name,
                                        const std::vector<int64_t>& expected_shape) const;
  // All tensor names, sorted.
  std::vector<std::string> Names() const;
  // Total bytes of all mapped files.
  size_t mapped_bytes() const;
  // 16 lowercase hex digits identifying the checkpoint: a stable 64-bit
  // FNV-1a hash of every tensor's name, dtype, shape and first 16 bytes of
  // data, in name order (the pages read for those bytes are released
  // again). Copies of one checkpoint, in any sharding, agree; checkpoints
  // differing in a tensor's name, dtype, shape or leading values (a
  // fine-tune, another conversion) differ with overwhelming probability. Not
  // a checksum of every byte, which would take minutes at real sizes; not a
  // security measure.
  std::string Fingerprint() const;

 private:
  struct Mapping;
  Checkpoint() = default;

  std::vector<std::unique_ptr<Mapping>> mappings_;
  absl::flat_hash_map<std::string, TensorView> tensors_;
};

// Drops the resident pages wholly inside [p, p + bytes) of a checkpoint's
// read-only private mapping (MADV_DONTNEED), so a process that has read
// tensors it converted (quantized, copied) does not keep them resident.
// Harmless for correctness: a later read faults the page back in from the
// file.
void ReleaseMappedPages(const void* p, size_t bytes);

// Writers. Both write tensors contiguously in the order given (so a
// tensor's data is only as aligned as the sizes before it make it; the
// reader copes), list them in that order in the header after
// "__metadata__": {"format": "pt"} (which transformers expects), pad the
// header with spaces to a multiple of 8 bytes, and write each file as
// `<path>.tmp.<pid>` renamed into place. Errors: InvalidArgument for a duplicate
// or reserved name, a negative shape or a byte count != shape x dtype size;
// an errno-derived status for I/O errors.

// A tensor's name, dtype and shape: what a header entry says.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// Streams one safetensors file: the header is written from the specs at
// Create, then each tensor's bytes in spec order (one tensor in memory at a
// time, however large the file). Not thread-safe. Destroying it before
// Finish removes the temporary file.
class SafetensorsFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFileWriter>> Create(
      const std::string& path, std::vector<TensorSpec> specs);
  ~SafetensorsFileWriter();
  SafetensorsFileWriter(const SafetensorsFileWriter&) = delete;
  SafetensorsFileWriter& operator=(const SafetensorsFileWriter&) = delete;

  // The next tensor's data: `name` must be the next spec's and `bytes` its
  // whole size (FailedPrecondition / InvalidArgument otherwise).
  absl::Status Append(std::string_view name, std::string_view bytes);
  // After every tensor: closes the file and renames it into place.
  absl::Status Finish();
  // Bytes of a spec's data (shape x dtype size); InvalidArgument for a
  // negative or overflowing shape.
  static absl::StatusOr<uint64_t> DataBytes(const TensorSpec& spec);

 private:
  SafetensorsFileWriter() = default;
  std::string path_, tmp_path_;
  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;
  size_t next_ = 0;
  std::FILE* file_ = nullptr;
};

// Writes a checkpoint directory the way transformers' save_pretrained
// does: `model.safetensors` when everything fits in one shard, else
// `model-0000i-of-0000N.safetensors` files of at most `max_shard_bytes` of
// tensor data each (a larger tensor gets a shard of its own) plus
// `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map"}),
// written last, so the directory is complete when the index (or the single
// file) appears. Tensors arrive through Append in spec order. Not
// thread-safe.
class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(const std::string& dir,
                                                                  std::vector<TensorSpec> specs,
                                                                  uint64_t max_shard_bytes);
  absl::Status Append(std::string_view name, std::string_view bytes);
  absl::Status Finish();
  // Bytes of tensor data written so far and in all.
  uint64_t written_bytes() const { return written_; }
  uint64_t total_bytes() const { return total_; }

 private:
  CheckpointWriter() = default;
  absl::Status OpenShard(size_t shard);
  std::string dir_;
  std::vector<std::vector<TensorSpec>> shards_;
  std::vector<std::string> shard_names_;
  size_t shard_ = 0, in_shard_ = 0;
  std::unique_ptr<SafetensorsFileWriter> writer_;
  uint64_t written_ = 0, total_ = 0;
};

// Writes a single-file safetensors checkpoint at `path` (used by tests);
// the rules above.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data, shape x dtype size bytes
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace dsv2

#endif  // DSV2_MODEL_SAFETENSORS_H_
