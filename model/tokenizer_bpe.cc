// BpeModel (tokenizer_internal.h): tokenizer.json's "model" of type BPE as `tokenizers`
// (0.23.3) loads it (vocabulary, merges in rank order, later duplicates winning) and
// applies it (BPE::merge_word + Word::merge_all, without dropout), with a piece cache.
#include <cstdint>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2::tokenizer_internal {

using ::nlohmann::json;
namespace uni = ::dsv2::unicode_internal;

namespace {

constexpr std::string_view kWhere = "model";

// Options of tokenizers' BPE that change the ids and are not implemented here: refused
// rather than ignored.
absl::Status CheckSupported(const json& config) {
  if (!config.is_object()) return absl::InvalidArgumentError("model is not an object");
  if (const json* type = JsonMember(config, "type"); type != nullptr && *type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("model type ", type->dump(), " is not supported (only BPE)"));
  }
  if (const json* dropout = JsonMember(config, "dropout");
      dropout != nullptr && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return absl::UnimplementedError("model.dropout is not supported");
  }
  absl::StatusOr<bool> byte_fallback = JsonBool(config, "byte_fallback", false, kWhere);
  if (!byte_fallback.ok()) return byte_fallback.status();
  if (*byte_fallback) return absl::UnimplementedError("model.byte_fallback is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = JsonMember(config, key);
    if (v != nullptr && !v->is_null() && !(v->is_string() && v->get<std::string>().empty())) {
      return absl::UnimplementedError(absl::StrCat("model.", key, " is not supported"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& config) {
  if (absl::Status s = CheckSupported(config); !s.ok()) return s;
  std::unique_ptr<BpeModel> model(new BpeModel());
  absl::StatusOr<bool> fuse_unk = JsonBool(config, "fuse_unk", false, kWhere);
  if (!fuse_unk.ok()) return fuse_unk.status();
  model->fuse_unk_ = *fuse_unk;
  absl::StatusOr<bool> ignore_merges = JsonBool(config, "ignore_merges", false, kWhere);
  if (!ignore_merges.ok()) return ignore_merges.status();
  model->ignore_merges_ = *ignore_merges;
  if (absl::Status s = model->ReadVocab(config); !s.ok()) return s;
  if (absl::Status s = model->ReadMerges(config); !s.ok()) return s;

  for (int b = 0; b < 256; ++b) {
    std::string ch;
    uni::AppendUtf8(uni::ByteToUnicode(static_cast<uint8_t>(b)), &ch);
    const auto it = model->vocab_.find(ch);
    model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }

  if (const json* unk = JsonMember(config, "unk_token"); unk != nullptr && !unk->is_null()) {
    if (!unk->is_string()) return absl::InvalidArgumentError("model.unk_token is not a string");
    const auto it = model->vocab_.find(unk->get<std::string>());
    if (it == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model.unk_token \"", unk->get<std::string>(),
                                                     "\" is not in the vocabulary"));
    }
    model->unk_id_ = it->second;
  }
  return model;
}

absl::Status BpeModel::ReadVocab(const json& config) {
  const json* vocab = JsonMember(config, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("model.vocab is missing or not an object");
  }
  // Ids index dense per-id tables; a vocabulary this large is certainly corrupt.
  constexpr int64_t kMaxId = 1 << 24;
  vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= kMaxId) {
      return absl::InvalidArgumentError(absl::StrCat("model.vocab[\"", it.key(),
                                                     "\"] = ", it.value().dump(),
                                                     " is not an id in [0, ", kMaxId, ")"));
    }
    const int32_t id = it.value().get<int32_t>();
    vocab_[it.key()] = id;
    if (static_cast<size_t>(id) >= id_to_token_.size()) {
      id_to_token_.resize(id + 1);
      has_id_.resize(id + 1, false);
    }
    id_to_token_[id] = it.key();
    has_id_[id] = true;
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ReadMerges(const json& config) {
  const json* merges = JsonMember(config, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return absl::InvalidArgumentError("model.merges is missing or not an array");
  }
  merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& m = (*merges)[rank];
    std::string left;
    std::string right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", rank, "] = \"", s, "\" is not \"left right\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "] = ", m.dump(), " is not a merge"));
    }
    const auto l = vocab_.find(left);
    const auto r = vocab_.find(right);
    const auto merged = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || merged == vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "] (\"", left, "\", \"", right,
                       "\"): a token or the merged token is not in the vocabulary"));
    }
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    // Later duplicates win, as when tokenizers collects the merges into a HashMap.
    merges_[key] = Merge{static_cast<int32_t>(rank), merged->second};
  }
  return absl::OkStatus();
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(ToAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() < kMaxCachedPieceBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&mu_);
    const auto it = cache_.find(ToAbsl(piece));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word;
  MergeWord(piece, &word);
  ids->insert(ids->end(), word.begin(), word.end());
  if (cacheable) {
    absl::MutexLock lock(&mu_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(word));
  }
}

// tokenizers' BPE::merge_word + Word::merge_all (without dropout): a linked list of
// symbols and a min-heap of candidate merges ordered by (rank, position); stale heap
// entries are recognised because the pair no longer merges into the same id.
void BpeModel::MergeWord(std::string_view piece, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    std::string token;
    for (char b : piece) uni::AppendUtf8(uni::ByteToUnicode(static_cast<uint8_t>(b)), &token);
    if (const auto it = vocab_.find(ToAbsl(token)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&symbols](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, true});
  };
  bool pending_unk = false;  // an unknown run not yet added (only with unk_token)
  for (char ch : piece) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (pending_unk) add(*unk_id_);
      pending_unk = false;
      add(id);
    } else if (unk_id_.has_value()) {
      if (pending_unk && !fuse_unk_) add(*unk_id_);
      pending_unk = true;
    }
    // Without unk_token, characters missing from the vocabulary are dropped.
  }
  if (pending_unk) add(*unk_id_);

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  auto find_merge = [this](int32_t left, int32_t right) -> const Merge* {
    const auto it =
        merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    const Merge* current = find_merge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.next = right.next;
    symbols[right_pos].alive = false;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = find_merge(symbols[left.prev].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const Merge* m = find_merge(left.id, symbols[left.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

}  // namespace dsv2::tokenizer_internal
