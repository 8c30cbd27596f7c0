// Safetensors reader/writer. Format (https://github.com/huggingface/safetensors):
//
//   bytes [0, 8)        u64 little-endian N = header length
//   bytes [8, 8 + N)    UTF-8 JSON object: name -> {"dtype", "shape", "data_offsets"},
//                       plus an optional "__metadata__": {string: string}
//   bytes [8 + N, EOF)  data section; data_offsets [begin, end) are relative to it
//
// Everything a file can contain is untrusted: every size is checked with
// overflow-checked arithmetic before a pointer is formed, and the JSON parser
// only ever sees the header's N bytes. nlohmann::json reports errors by
// throwing; every throw is caught in this file (ParseJson) and becomes a
// Status.
//
// Compared with the reference (Rust) reader we are lenient in one way: gaps
// between tensors and trailing bytes after the last tensor are allowed (the
// reference requires the ranges to tile the data section exactly). Overlaps
// are still rejected.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/fingerprint.h"
#include "base/status_macros.h"
#include "model/safetensors_internal.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using Json = nlohmann::json;

constexpr char kIndexFileName[] = "model.safetensors.index.json";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kMetadataKey[] = "__metadata__";

// The reference implementation refuses headers above 100 MB; so do we, which
// also bounds the memory the JSON parser can be made to allocate.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Index files are a few MB even for the 236B model (~60k weights).
constexpr uint64_t kMaxIndexBytes = 256ull << 20;
// A valid header nests 3 deep (object -> entry -> shape); the limit only
// stops pathological inputs ("[[[[...") from building deep trees.
constexpr int kMaxJsonDepth = 16;

// The image's Abseil is built with its own absl::string_view (not an alias of
// std::string_view), so std::string_view arguments are converted explicitly.
absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Untrusted bytes (tensor names, parser messages quoting the input) made safe
// to put in a log line: control and non-ASCII bytes become \xNN.
std::string Printable(absl::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      out += {'\\', 'x', kHex[u >> 4], kHex[u & 15]};
    }
  }
  return out;
}

std::string Basename(absl::string_view path) {
  const size_t slash = path.find_last_of('/');
  return std::string(slash == absl::string_view::npos ? path : path.substr(slash + 1));
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  // errno 0 would map to OK; a failure we could not attribute is EIO.
  return absl::ErrnoToStatus(err != 0 ? err : EIO, absl::StrCat(what, " ", path));
}

// Thrown by the parse callback to abort a parse; never leaves ParseJson.
struct JsonReject {
  std::string message;
};

// Parses `text` strictly: no comments, no trailing garbage, nesting at most
// kMaxJsonDepth, no duplicate keys within one object (the reference parsers
// keep the last duplicate silently; we refuse the ambiguity). `what` names the
// file in error messages.
absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view what) {
  std::vector<absl::flat_hash_set<std::string>> open_object_keys;
  int depth = 0;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) -> bool {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_object_keys.emplace_back();
        [[fallthrough]];
      case Json::parse_event_t::array_start:
        if (++depth > kMaxJsonDepth) {
          throw JsonReject{absl::StrCat("JSON nested deeper than ", kMaxJsonDepth, " levels")};
        }
        break;
      case Json::parse_event_t::object_end:
        open_object_keys.pop_back();
        [[fallthrough]];
      case Json::parse_event_t::array_end:
        --depth;
        break;
      case Json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_object_keys.back().insert(key).second) {
          throw JsonReject{absl::StrCat("duplicate key '", Printable(key), "'")};
        }
        break;
      }
      case Json::parse_event_t::value:
        break;
    }
    return true;  // keep everything
  };
  try {
    return Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const JsonReject& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed JSON header: ", e.message));
  } catch (const std::exception& e) {
    // nlohmann's message quotes the last bytes read, which may be binary, and
    // starts with a "[json.exception.parse_error.101] " tag we drop.
    absl::string_view msg = e.what();
    if (const size_t tag_end = msg.find("] ");
        absl::StartsWith(msg, "[json.") && tag_end != msg.npos) {
      msg.remove_prefix(tag_end + 2);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": malformed JSON header: ", Printable(msg)));
  }
}

// Maps a safetensors dtype string. Known-but-unsupported types get their own
// message so a user sees that the file is fine but we cannot use it.
absl::StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "BF16") return DType::kBF16;
  if (s == "F16") return DType::kF16;
  if (s == "I8") return DType::kI8;
  if (s == "U8") return DType::kU8;
  static constexpr absl::string_view kOtherValid[] = {
      "BOOL", "F8_E5M2", "F8_E4M3", "F8_E8M0", "E8M0", "F4",  "F6_E2M3", "F6_E3M2",
      "I16",  "U16",     "I32",     "U32",     "F64",  "I64", "U64",     "C64"};
  for (absl::string_view v : kOtherValid) {
    if (s == v) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported dtype '", s, "' (supported: F32, BF16, F16, I8, U8)"));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", Printable(s), "'"));
}

const char* DTypeTag(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

// A non-negative JSON integer as u64; nullopt for anything else (negative,
// fractional, exponent form, bool, string, ...).
std::optional<uint64_t> AsNonNegativeInt(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

// One header entry after validation. begin/end are relative to the data
// section and satisfy begin <= end <= data section size.
struct HeaderEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

// Validates one header entry. `file` is the basename for messages.
absl::StatusOr<HeaderEntry> ParseEntry(absl::string_view file, const std::string& name,
                                       const Json& v, uint64_t data_bytes) {
  const std::string prefix = absl::StrCat(
      file, ": tensor '", Printable(absl::string_view(name.data(), name.size())), "': ");
  auto fail = [&](absl::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, msg));
  };
  if (!v.is_object()) {
    return fail(absl::StrCat("entry is a JSON ", v.type_name(), ", not an object"));
  }

  HeaderEntry e;
  e.name = name;
  const auto dtype_it = v.find("dtype");
  if (dtype_it == v.end()) return fail("missing \"dtype\"");
  if (!dtype_it->is_string()) return fail("\"dtype\" is not a string");
  absl::StatusOr<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return fail(dtype.status().message());
  e.dtype = *dtype;

  const auto shape_it = v.find("shape");
  if (shape_it == v.end()) return fail("missing \"shape\"");
  if (!shape_it->is_array()) return fail("\"shape\" is not an array");
  uint64_t num_elements = 1;
  bool overflow = false;
  for (const Json& d : *shape_it) {
    const std::optional<uint64_t> dim = AsNonNegativeInt(d);
    if (!dim.has_value() || *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return fail(absl::StrCat("shape ", Printable(shape_it->dump()),
                               " is not an array of non-negative integers"));
    }
    e.shape.push_back(static_cast<int64_t>(*dim));
    overflow |= __builtin_mul_overflow(num_elements, *dim, &num_elements);
  }
  uint64_t num_bytes = 0;
  overflow |= __builtin_mul_overflow(num_elements, uint64_t{DTypeSize(e.dtype)}, &num_bytes);
  if (overflow) return fail(absl::StrCat("shape ", ShapeString(e.shape), " overflows 64 bits"));

  const auto offsets_it = v.find("data_offsets");
  if (offsets_it == v.end()) return fail("missing \"data_offsets\"");
  std::optional<uint64_t> begin, end;
  if (offsets_it->is_array() && offsets_it->size() == 2) {
    begin = AsNonNegativeInt((*offsets_it)[0]);
    end = AsNonNegativeInt((*offsets_it)[1]);
  }
  if (!begin.has_value() || !end.has_value()) {
    return fail(absl::StrCat("data_offsets ", Printable(offsets_it->dump()),
                             " is not [begin, end] with non-negative integers"));
  }
  e.begin = *begin;
  e.end = *end;
  const std::string range = absl::StrCat("data_offsets [", e.begin, ", ", e.end, "]");
  if (e.begin > e.end) return fail(absl::StrCat(range, " has begin > end"));
  if (e.end > data_bytes) {
    return fail(absl::StrCat(range, " end past the data section (", data_bytes, " bytes)"));
  }
  if (e.end - e.begin != num_bytes) {
    return fail(absl::StrCat(range, " spans ", e.end - e.begin, " bytes but shape ",
                             ShapeString(e.shape), " x ", DTypeTag(e.dtype), " needs ", num_bytes));
  }
  return e;
}

absl::Status CheckMetadata(absl::string_view file, const Json& v) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": \"__metadata__\" is a JSON ", v.type_name(), ", not an object"));
  }
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": \"__metadata__\" value for '",
                                                     Printable(key), "' is not a string"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace safetensors_internal {

absl::StatusOr<std::vector<TensorView>> ParseImage(const std::string& file, const std::byte* base,
                                                   size_t size) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": file is ", size,
                     " bytes; a safetensors file starts with an 8-byte header length"));
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) {
    header_bytes = header_bytes << 8 | std::to_integer<uint64_t>(base[i]);
  }
  if (header_bytes > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header length ", header_bytes,
                                                   " runs past the end of the file (", size,
                                                   " bytes)"));
  }
  if (header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header length ", header_bytes,
                                                   " exceeds the limit of ", kMaxHeaderBytes));
  }
  const uint64_t data_bytes = size - 8 - header_bytes;
  const std::byte* data = base + 8 + header_bytes;

  absl::StatusOr<Json> header =
      ParseJson(absl::string_view(reinterpret_cast<const char*>(base + 8), header_bytes), file);
  if (!header.ok()) return header.status();
  if (!header->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": header is a JSON ", header->type_name(), ", not an object"));
  }

  std::vector<HeaderEntry> entries;
  entries.reserve(header->size());
  for (const auto& [name, value] : header->items()) {
    if (name == kMetadataKey) {
      if (absl::Status s = CheckMetadata(file, value); !s.ok()) return s;
      continue;
    }
    absl::StatusOr<HeaderEntry> e = ParseEntry(file, name, value, data_bytes);
    if (!e.ok()) return e.status();
    entries.push_back(*std::move(e));
  }

  // Overlap check over non-empty ranges (an empty range holds no bytes).
  std::vector<const HeaderEntry*> by_begin;
  for (const HeaderEntry& e : entries) {
    if (e.begin != e.end) by_begin.push_back(&e);
  }
  std::sort(by_begin.begin(), by_begin.end(), [](const HeaderEntry* a, const HeaderEntry* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const HeaderEntry& a = *by_begin[i - 1];
    const HeaderEntry& b = *by_begin[i];
    if (a.end > b.begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": tensor '", Printable(b.name), "': data_offsets [", b.begin, ", ", b.end,
          "] overlap tensor '", Printable(a.name), "' [", a.begin, ", ", a.end, "]"));
    }
  }

  std::vector<TensorView> views;
  views.reserve(entries.size());
  for (HeaderEntry& e : entries) {
    TensorView v;
    v.name = std::move(e.name);
    v.file = file;
    v.dtype = e.dtype;
    v.shape = std::move(e.shape);
    v.data = data + e.begin;  // e.end <= data_bytes checked in ParseEntry
    v.num_bytes = static_cast<size_t>(e.end - e.begin);
    views.push_back(std::move(v));
  }
  return views;
}

}  // namespace safetensors_internal

namespace {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus(errno, "cannot open", path);
  std::string contents;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    contents.append(buf, static_cast<size_t>(in.gcount()));
    if (contents.size() > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(Basename(path), ": larger than the limit of ", max_bytes, " bytes"));
    }
  }
  if (in.bad()) return ErrnoStatus(errno, "cannot read", path);
  return contents;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow for a view made by Checkpoint
  return n;
}

// One read-only mapping of a whole shard file. Nested in Checkpoint so that
// AddFile may fill the Checkpoint's private members.
struct Checkpoint::Mapping {
  std::string file;  // basename
  void* addr = nullptr;
  size_t size = 0;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }

  static absl::StatusOr<std::unique_ptr<Mapping>> Open(const std::string& path);
  // Maps `path`, validates it and adds its tensors to `ckpt`; nothing is added
  // when it fails.
  static absl::Status AddFile(Checkpoint& ckpt, const std::string& path);
};

absl::StatusOr<std::unique_ptr<Checkpoint::Mapping>> Checkpoint::Mapping::Open(
    const std::string& path) {
  auto m = std::make_unique<Mapping>();
  m->file = Basename(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "cannot stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  m->size = static_cast<size_t>(st.st_size);
  if (m->size >= 8) {  // mmap of length 0 fails; short files are rejected by ParseImage
    void* addr = ::mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoStatus(err, "cannot mmap", path);
    }
    m->addr = addr;
  }
  ::close(fd);  // the mapping keeps the file referenced
  return m;
}

absl::Status Checkpoint::Mapping::AddFile(Checkpoint& ckpt, const std::string& path) {
  absl::StatusOr<std::unique_ptr<Mapping>> m = Open(path);
  if (!m.ok()) return m.status();
  absl::StatusOr<std::vector<TensorView>> views = safetensors_internal::ParseImage(
      (*m)->file, static_cast<const std::byte*>((*m)->addr), (*m)->size);
  if (!views.ok()) return views.status();
  for (const TensorView& v : *views) {
    if (auto it = ckpt.tensors_.find(v.name); it != ckpt.tensors_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(v.file, ": tensor '", Printable(v.name), "' is also in ", it->second.file));
    }
  }
  for (TensorView& v : *views) {
    std::string name = v.name;
    ckpt.tensors_.emplace(std::move(name), std::move(v));
  }
  ckpt.mappings_.push_back(*std::move(m));
  return absl::OkStatus();
}

Checkpoint::~Checkpoint() = default;

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenFile(const std::string& path) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());  // private constructor
  if (absl::Status s = Mapping::AddFile(*ckpt, path); !s.ok()) return s;
  return ckpt;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenDir(const std::string& dir) {
  const std::string index_path = JoinPath(dir, kIndexFileName);
  if (!PathExists(index_path)) {
    const std::string single_path = JoinPath(dir, kSingleFileName);
    if (!PathExists(single_path)) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": neither ", kIndexFileName, " nor ", kSingleFileName, " exists"));
    }
    return OpenFile(single_path);
  }

  absl::StatusOr<std::string> text = ReadSmallFile(index_path, kMaxIndexBytes);
  if (!text.ok()) return text.status();
  absl::StatusOr<Json> index = ParseJson(*text, kIndexFileName);
  if (!index.ok()) return index.status();
  auto bad_index = [](absl::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(kIndexFileName, ": ", msg));
  };
  if (!index->is_object()) {
    return bad_index(absl::StrCat("is a JSON ", index->type_name(), ", not an object"));
  }
  const auto map_it = index->find("weight_map");
  if (map_it == index->end()) return bad_index("missing \"weight_map\"");
  if (!map_it->is_object()) return bad_index("\"weight_map\" is not an object");
  if (map_it->empty()) return bad_index("\"weight_map\" is empty");

  // Shard file names, opened in sorted order so errors are deterministic.
  std::vector<std::string> shards;
  absl::flat_hash_map<std::string, std::string> first_tensor_of_shard;  // for messages
  for (const auto& [name, value] : map_it->items()) {
    const std::string tensor =
        absl::StrCat("weight_map['", Printable(absl::string_view(name.data(), name.size())), "']");
    if (!value.is_string()) return bad_index(absl::StrCat(tensor, " is not a string"));
    const std::string& shard = value.get_ref<const std::string&>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\0') != std::string::npos) {
      return bad_index(absl::StrCat(tensor, " = '", Printable(shard),
                                    "' is not a file name in the checkpoint directory"));
    }
    if (first_tensor_of_shard.emplace(shard, name).second) shards.push_back(shard);
  }
  std::sort(shards.begin(), shards.end());

  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());  // private constructor
  for (const std::string& shard : shards) {
    const std::string path = JoinPath(dir, shard);
    if (!PathExists(path)) {
      return absl::NotFoundError(
          absl::StrCat(kIndexFileName, ": shard '", shard, "' (holding tensor '",
                       Printable(first_tensor_of_shard[shard]), "') does not exist in ", dir));
    }
    if (absl::Status s = Mapping::AddFile(*ckpt, path); !s.ok()) return s;
  }
  // Tensors present in a shard but absent from the index are kept, as
  // transformers does (it loads every key of every listed shard).
  for (const auto& [name, value] : map_it->items()) {
    const std::string& shard = value.get_ref<const std::string&>();
    const TensorView* v = ckpt->Find(name);
    if (v == nullptr) {
      return bad_index(
          absl::StrCat("tensor '", Printable(absl::string_view(name.data(), name.size())),
                       "' is mapped to ", shard, " but that shard does not contain it"));
    }
    if (v->file != shard) {
      return bad_index(absl::StrCat("tensor '",
                                    Printable(absl::string_view(name.data(), name.size())),
                                    "' is mapped to ", shard, " but it is in ", v->file));
    }
  }
  return ckpt;
}

const TensorView* Checkpoint::Find(std::string_view name) const {
  auto it = tensors_.find(ToAbsl(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<const TensorView*> Checkpoint::Get(
    std::string_view name, const std::vector<int64_t>& expected_shape) const {
  const TensorView* v = Find(name);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat(ToAbsl(name), ": tensor missing from checkpoint"));
  }
  if (v->shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(v->file, ": tensor '", ToAbsl(name),
                                                   "' has shape ", ShapeString(v->shape),
                                                   "; expected ", ShapeString(expected_shape)));
  }
  return v;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, v] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

size_t Checkpoint::mapped_bytes() const {
  size_t total = 0;
  for (const auto& m : mappings_) total += m->size;
  return total;
}

std::string Checkpoint::Fingerprint() const {
  Fnv1a64 h;
  for (const std::string& name : Names()) {
    const TensorView& t = tensors_.at(name);
    h.Add(name);
    h.Add(static_cast<uint64_t>(t.dtype));
    h.Add(static_cast<uint64_t>(t.shape.size()));
    for (int64_t d : t.shape) h.Add(static_cast<uint64_t>(d));
    const size_t n = std::min<size_t>(t.num_bytes, 16);
    h.Add(std::string_view(reinterpret_cast<const char*>(t.data), n));
    if (n > 0) {
      // Drop the page just read (the loaders fault in what they use).
      const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
      ReleaseMappedPages(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(t.data) / page * page), page);
    }
  }
  return h.Hex();
}

void ReleaseMappedPages(const void* p, size_t bytes) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const auto end = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

absl::StatusOr<uint64_t> SafetensorsFileWriter::DataBytes(const TensorSpec& spec) {
  uint64_t num_bytes = DTypeSize(spec.dtype);
  for (int64_t d : spec.shape) {
    if (d < 0 || __builtin_mul_overflow(num_bytes, static_cast<uint64_t>(d), &num_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", Printable(spec.name),
                                                     "': invalid shape ", ShapeString(spec.shape)));
    }
  }
  return num_bytes;
}

absl::StatusOr<std::unique_ptr<SafetensorsFileWriter>> SafetensorsFileWriter::Create(
    const std::string& path, std::vector<TensorSpec> specs) {
  auto w = std::unique_ptr<SafetensorsFileWriter>(new SafetensorsFileWriter());
  // "__metadata__": {"format": "pt"} is what torch's save_file writes;
  // transformers refuses shards whose format is not one it knows.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header[kMetadataKey] = {{"format", "pt"}};
  absl::flat_hash_set<absl::string_view> seen;
  uint64_t offset = 0;
  for (const TensorSpec& t : specs) {
    const std::string what = absl::StrCat(Basename(path), ": tensor '", Printable(t.name), "'");
    if (t.name == kMetadataKey || !seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": duplicate or reserved name"));
    }
    absl::StatusOr<uint64_t> num_bytes = DataBytes(t);
    if (!num_bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Basename(path), ": ", num_bytes.status().message()));
    }
    header[t.name] = {{"dtype", DTypeTag(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *num_bytes}}};
    offset += *num_bytes;
    w->sizes_.push_back(*num_bytes);
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const std::exception& e) {  // e.g. a name that is not valid UTF-8
    return absl::InvalidArgumentError(
        absl::StrCat(Basename(path), ": cannot encode header: ", Printable(e.what())));
  }
  // Pad so the data section starts 8-byte aligned within the file.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) {
    prefix[i] = static_cast<char>(uint64_t{header_text.size()} >> (8 * i));
  }
  w->path_ = path;
  // The pid keeps two processes writing the same checkpoint at once apart.
  w->tmp_path_ = absl::StrCat(path, ".tmp.", ::getpid());
  w->specs_ = std::move(specs);
  errno = 0;
  w->file_ = std::fopen(w->tmp_path_.c_str(), "wb");
  if (w->file_ == nullptr) return ErrnoStatus(errno, "cannot create", w->tmp_path_);
  if (std::fwrite(prefix.data(), 1, prefix.size(), w->file_) != prefix.size() ||
      std::fwrite(header_text.data(), 1, header_text.size(), w->file_) != header_text.size()) {
    return ErrnoStatus(errno, "cannot write", w->tmp_path_);
  }
  return w;
}

SafetensorsFileWriter::~SafetensorsFileWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

absl::Status SafetensorsFileWriter::Append(std::string_view name, std::string_view bytes) {
  if (file_ == nullptr || next_ >= specs_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        Basename(path_), ": tensor '", Printable(absl::string_view(name.data(), name.size())),
        "' appended after the last tensor"));
  }
  const TensorSpec& t = specs_[next_];
  const std::string what = absl::StrCat(Basename(path_), ": tensor '", Printable(t.name), "'");
  if (name != t.name) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " is next; got '", Printable(absl::string_view(name.data(), name.size())), "'"));
  }
  if (bytes.size() != sizes_[next_]) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": has ", bytes.size(), " bytes; shape ",
                                                   ShapeString(t.shape), " x ", DTypeTag(t.dtype),
                                                   " needs ", sizes_[next_]));
  }
  errno = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return ErrnoStatus(errno, "cannot write", tmp_path_);
  }
  ++next_;
  return absl::OkStatus();
}

absl::Status SafetensorsFileWriter::Finish() {
  if (file_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(Basename(path_), ": already finished"));
  }
  if (next_ != specs_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(Basename(path_), ": ", specs_.size() - next_,
                                                      " tensors not written, the next is '",
                                                      Printable(specs_[next_].name), "'"));
  }
  errno = 0;
  const bool flushed = std::fflush(file_) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  const int close_errno = errno;
  file_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tmp_path_.c_str());
    return ErrnoStatus(!flushed ? flush_errno : close_errno, "cannot write", tmp_path_);
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_path_.c_str());
    return ErrnoStatus(err, "cannot rename to", path_);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    const std::string& dir, std::vector<TensorSpec> specs, uint64_t max_shard_bytes) {
  auto w = std::unique_ptr<CheckpointWriter>(new CheckpointWriter());
  w->dir_ = dir;
  uint64_t in_shard = 0;
  for (TensorSpec& t : specs) {
    DSV2_ASSIGN_OR_RETURN(const uint64_t bytes, SafetensorsFileWriter::DataBytes(t));
    if (w->shards_.empty() || (in_shard > 0 && in_shard + bytes > max_shard_bytes)) {
      w->shards_.emplace_back();
      in_shard = 0;
    }
    in_shard += bytes;
    w->total_ += bytes;
    w->shards_.back().push_back(std::move(t));
  }
  if (w->shards_.empty()) w->shards_.emplace_back();
  const size_t n = w->shards_.size();
  for (size_t i = 0; i < n; ++i) {
    w->shard_names_.push_back(n == 1
                                  ? std::string("model.safetensors")
                                  : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                                    static_cast<int>(i + 1), static_cast<int>(n)));
  }
  DSV2_RETURN_IF_ERROR(w->OpenShard(0));
  return w;
}

absl::Status CheckpointWriter::OpenShard(size_t shard) {
  shard_ = shard;
  in_shard_ = 0;
  DSV2_ASSIGN_OR_RETURN(
      writer_, SafetensorsFileWriter::Create(JoinPath(dir_, shard_names_[shard]), shards_[shard]));
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Append(std::string_view name, std::string_view bytes) {
  while (writer_ != nullptr && in_shard_ == shards_[shard_].size()) {
    DSV2_RETURN_IF_ERROR(writer_->Finish());
    writer_.reset();
    if (shard_ + 1 < shards_.size()) DSV2_RETURN_IF_ERROR(OpenShard(shard_ + 1));
  }
  if (writer_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("tensor '", Printable(absl::string_view(name.data(), name.size())),
                     "' appended after the last tensor"));
  }
  DSV2_RETURN_IF_ERROR(writer_->Append(name, bytes));
  ++in_shard_;
  written_ += bytes.size();
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Finish() {
  while (writer_ != nullptr) {
    if (in_shard_ != shards_[shard_].size()) return writer_->Finish();  // names what is missing
    DSV2_RETURN_IF_ERROR(writer_->Finish());
    writer_.reset();
    if (shard_ + 1 < shards_.size()) DSV2_RETURN_IF_ERROR(OpenShard(shard_ + 1));
  }
  if (shards_.size() == 1) return absl::OkStatus();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const TensorSpec& t : shards_[i]) weight_map[t.name] = shard_names_[i];
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_}}},
                                  {"weight_map", std::move(weight_map)}};
  const std::string path = JoinPath(dir_, "model.safetensors.index.json");
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream f(tmp);
    f << index.dump(2) << "\n";
    f.close();
    if (!f) return ErrnoStatus(errno, "cannot write", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return ErrnoStatus(err, "cannot rename to", path);
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFileWriter> w,
                        SafetensorsFileWriter::Create(path, std::move(specs)));
  for (const TensorToWrite& t : tensors) DSV2_RETURN_IF_ERROR(w->Append(t.name, t.bytes));
  return w->Finish();
}

}  // namespace dsv2
