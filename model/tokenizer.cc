#include "model/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2 {
namespace {

using ::nlohmann::json;
namespace ti = ::dsv2::tokenizer_internal;
namespace uni = ::dsv2::unicode_internal;

constexpr uint8_t kIdKnown = 1;
constexpr uint8_t kIdSpecial = 2;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return contents.str();
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view name) {
  try {
    json j = json::parse(text.begin(), text.end());
    if (!j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(ti::ToAbsl(name), ": top level is not a JSON object"));
    }
    return j;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(ti::ToAbsl(name), ": malformed JSON: ", e.what()));
  }
}

absl::Status WithFile(const absl::Status& s, std::string_view name) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(ti::ToAbsl(name), ": ", s.message()));
}

absl::Status CheckNormalizer(const json& normalizer) {
  if (normalizer.is_null()) return absl::OkStatus();
  const json* type = ti::JsonMember(normalizer, "type");
  const json* list = ti::JsonMember(normalizer, "normalizers");
  if (type != nullptr && *type == "Sequence" && list != nullptr && list->is_array() &&
      list->empty()) {
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("normalizer ", normalizer.dump().substr(0, 200), " is not supported"));
}

absl::Status CheckDecoder(const json& decoder) {
  const json* type = ti::JsonMember(decoder, "type");
  if (type != nullptr && *type == "ByteLevel") return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat("decoder ", decoder.dump().substr(0, 200),
                                               " is not supported (only ByteLevel)"));
}

// "bos_token": "<s>" or {"content": "<s>", ...} or null.
absl::StatusOr<std::string> ConfigTokenString(const json& config, std::string_view key) {
  const json* v = ti::JsonMember(config, key);
  if (v == nullptr || v->is_null()) return std::string();
  if (v->is_string()) return v->get<std::string>();
  return ti::JsonString(*v, "content", key);
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDir(const std::string& dir) {
  const std::string config_path = dir + "/tokenizer_config.json";
  const bool has_config = std::ifstream(config_path).good();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      FromFiles(dir + "/tokenizer.json", has_config ? config_path : "");
  if (!tok.ok() || (*tok)->chat_template_.has_value()) return tok;
  const std::string jinja_path = dir + "/chat_template.jinja";
  if (std::ifstream(jinja_path).good()) {
    absl::StatusOr<std::string> jinja = ReadFile(jinja_path);
    if (!jinja.ok()) return jinja.status();
    (*tok)->chat_template_ = *std::move(jinja);
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFiles(
    const std::string& tokenizer_json, const std::string& tokenizer_config_json) {
  absl::StatusOr<std::string> text = ReadFile(tokenizer_json);
  if (!text.ok()) return text.status();
  std::string config_text;
  if (!tokenizer_config_json.empty()) {
    absl::StatusOr<std::string> c = ReadFile(tokenizer_config_json);
    if (!c.ok()) return c.status();
    config_text = *std::move(c);
    if (config_text.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(tokenizer_config_json, ": empty file"));
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = FromJsonText(*text, config_text);
  if (tok.ok()) return tok;
  // Name the file: FromJsonText's messages start with "tokenizer.json: " or
  // "tokenizer_config.json: ".
  std::string message(tok.status().message());
  constexpr std::string_view kConfigPrefix = "tokenizer_config.json: ";
  constexpr std::string_view kJsonPrefix = "tokenizer.json: ";
  if (message.starts_with(kConfigPrefix)) {
    message = absl::StrCat(tokenizer_config_json, ": ", message.substr(kConfigPrefix.size()));
  } else if (message.starts_with(kJsonPrefix)) {
    message = absl::StrCat(tokenizer_json, ": ", message.substr(kJsonPrefix.size()));
  }
  return absl::Status(tok.status().code(), message);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonText(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json) {
  absl::StatusOr<json> j = ParseJson(tokenizer_json, "tokenizer.json");
  if (!j.ok()) return j.status();
  if (tokenizer_config_json.empty()) return FromJson(*j, nullptr);
  absl::StatusOr<json> config = ParseJson(tokenizer_config_json, "tokenizer_config.json");
  if (!config.ok()) return config.status();
  return FromJson(*j, &*config);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const json& tokenizer_json,
                                                               const json* tokenizer_config) {
  constexpr std::string_view kName = "tokenizer.json";
  const json* j = &tokenizer_json;
  if (!j->is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: top level is not a JSON object");
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  // nlohmann accessors throw on type mismatches; the helpers check types first, this is
  // the backstop that keeps a malformed file from escaping as an exception.
  try {
    absl::Status s = CheckNormalizer(j->value("normalizer", json()));
    if (s.ok()) s = CheckDecoder(j->value("decoder", json()));
    if (!s.ok()) return WithFile(s, kName);

    const json* model = ti::JsonMember(*j, "model");
    if (model == nullptr) return WithFile(absl::InvalidArgumentError("no \"model\""), kName);
    absl::StatusOr<std::unique_ptr<ti::BpeModel>> bpe = ti::BpeModel::FromJson(*model);
    if (!bpe.ok()) return WithFile(bpe.status(), kName);
    tok->model_ = *std::move(bpe);

    absl::StatusOr<std::unique_ptr<ti::AddedVocabulary>> added =
        ti::AddedVocabulary::FromJson(j->value("added_tokens", json()), *tok->model_);
    if (!added.ok()) return WithFile(added.status(), kName);
    tok->added_ = *std::move(added);

    absl::StatusOr<std::unique_ptr<ti::PreTokenizer>> pre =
        ti::PreTokenizer::FromJson(j->value("pre_tokenizer", json()));
    if (!pre.ok()) return WithFile(pre.status(), kName);
    tok->pre_tokenizer_ = *std::move(pre);

    s = tok->ParsePostProcessor(j->value("post_processor", json()));
    if (!s.ok()) return WithFile(s, kName);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(ti::ToAbsl(kName), ": ", e.what()));
  }

  // Per-id decoding table: added tokens shadow the vocabulary, as in tokenizers'
  // decode (added_vocabulary.simple_id_to_token(id).or_else(model.id_to_token(id))).
  tok->num_ids_ = std::max(tok->model_->max_id(), tok->added_->max_id()) + 1;
  tok->id_bytes_.resize(tok->num_ids_);
  tok->id_flags_.assign(tok->num_ids_, 0);
  for (int32_t id = 0; id < tok->num_ids_; ++id) {
    const std::string* token = nullptr;
    if (const ti::AddedToken* a = tok->added_->IdToToken(id)) {
      token = &a->content;
    } else {
      token = tok->model_->IdToToken(id);
    }
    if (token == nullptr) continue;
    tok->id_flags_[id] = kIdKnown | (tok->added_->IsSpecial(*token) ? kIdSpecial : 0);
    // ByteLevel decoder: a token made only of byte-alphabet characters stands for those
    // bytes; any other token (e.g. "<｜begin▁of▁sentence｜>") for its own UTF-8.
    std::string bytes;
    size_t pos = 0;
    bool all_mapped = true;
    while (pos < token->size() && all_mapped) {
      const int b = uni::UnicodeToByte(uni::DecodeUtf8(*token, &pos));
      all_mapped = b >= 0;
      bytes.push_back(static_cast<char>(b));
    }
    tok->id_bytes_[id] = all_mapped ? std::move(bytes) : *token;
  }

  if (const json* config = tokenizer_config; config != nullptr) {
    constexpr std::string_view kConfigName = "tokenizer_config.json";
    if (!config->is_object()) {
      return absl::InvalidArgumentError("tokenizer_config.json: top level is not a JSON object");
    }
    absl::StatusOr<std::string> bos = ConfigTokenString(*config, "bos_token");
    if (!bos.ok()) return WithFile(bos.status(), kConfigName);
    tok->bos_token_ = *std::move(bos);
    absl::StatusOr<std::string> eos = ConfigTokenString(*config, "eos_token");
    if (!eos.ok()) return WithFile(eos.status(), kConfigName);
    tok->eos_token_ = *std::move(eos);
    if (const json* t = ti::JsonMember(*config, "chat_template"); t != nullptr) {
      if (t->is_string()) {
        tok->chat_template_ = t->get<std::string>();
      } else if (t->is_array()) {
        for (const json& entry : *t) {
          const json* name = ti::JsonMember(entry, "name");
          const json* tmpl = ti::JsonMember(entry, "template");
          if (name != nullptr && *name == "default" && tmpl != nullptr && tmpl->is_string()) {
            tok->chat_template_ = tmpl->get<std::string>();
          }
        }
      } else if (!t->is_null()) {
        return absl::InvalidArgumentError(absl::StrCat(
            ti::ToAbsl(kConfigName), ": chat_template is neither a string nor a list"));
      }
    }
  }
  if (tok->bos_token_.empty() && !tok->template_.empty() && !tok->template_[0].is_sequence &&
      tok->template_[0].ids.size() == 1) {
    if (std::optional<std::string> t = tok->IdToToken(tok->template_[0].ids[0])) {
      tok->bos_token_ = *std::move(t);
    }
  }
  if (!tok->bos_token_.empty()) tok->bos_id_ = tok->TokenToId(tok->bos_token_);
  if (!tok->eos_token_.empty()) tok->eos_id_ = tok->TokenToId(tok->eos_token_);
  tok->add_bos_token_ = tok->bos_id_.has_value() && !tok->template_.empty() &&
                        !tok->template_[0].is_sequence && !tok->template_[0].ids.empty() &&
                        tok->template_[0].ids[0] == *tok->bos_id_;
  return tok;
}

// post_processor: TemplateProcessing's "single" template, RobertaProcessing /
// BertProcessing (cls $A sep), ByteLevel (ids unchanged), Sequence (applied in order,
// each wrapping the previous result), null.
absl::Status Tokenizer::ParsePostProcessor(const json& config) {
  template_.clear();
  if (config.is_null()) return absl::OkStatus();
  absl::StatusOr<std::string> type = ti::JsonString(config, "type", "post_processor");
  if (!type.ok()) return type.status();
  std::vector<TemplateItem> result;
  if (*type == "Sequence") {
    const json* list = ti::JsonMember(config, "processors");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("post_processor.processors is not an array");
    }
    std::vector<TemplateItem> composed;  // empty: identity
    for (const json& p : *list) {
      absl::Status s = ParsePostProcessor(p);
      if (!s.ok()) return s;
      if (template_.empty()) continue;
      if (composed.empty()) {
        composed = template_;
        continue;
      }
      std::vector<TemplateItem> outer;
      for (TemplateItem& item : template_) {
        if (item.is_sequence) {
          outer.insert(outer.end(), composed.begin(), composed.end());
        } else {
          outer.push_back(std::move(item));
        }
      }
      composed = std::move(outer);
    }
    template_ = std::move(composed);
    return absl::OkStatus();
  }
  if (*type == "ByteLevel") return absl::OkStatus();
  if (*type == "RobertaProcessing" || *type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const json* v = ti::JsonMember(config, key);
      if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[1].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat("post_processor.", key, " is not [token, id]"));
      }
      if (std::string_view(key) == "sep") result.push_back({true, {}});
      result.push_back({false, {(*v)[1].get<int32_t>()}});
    }
    template_ = std::move(result);
    return absl::OkStatus();
  }
  if (*type != "TemplateProcessing") {
    return absl::UnimplementedError(
        absl::StrCat("post_processor type \"", *type, "\" is not supported"));
  }
  const json* single = ti::JsonMember(config, "single");
  if (single == nullptr || !single->is_array()) {
    return absl::InvalidArgumentError("post_processor.single is not an array");
  }
  const json* specials = ti::JsonMember(config, "special_tokens");
  for (size_t k = 0; k < single->size(); ++k) {
    const json& item = (*single)[k];
    const std::string where = absl::StrCat("post_processor.single[", k, "]");
    if (const json* seq = ti::JsonMember(item, "Sequence")) {
      absl::StatusOr<std::string> id = ti::JsonString(*seq, "id", where + ".Sequence");
      if (!id.ok()) return id.status();
      if (*id != "A") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": sequence \"", *id, "\" in a single-sequence template"));
      }
      result.push_back({true, {}});
    } else if (const json* sp = ti::JsonMember(item, "SpecialToken")) {
      absl::StatusOr<std::string> name = ti::JsonString(*sp, "id", where + ".SpecialToken");
      if (!name.ok()) return name.status();
      const json* entry = specials == nullptr ? nullptr : ti::JsonMember(*specials, *name);
      const json* ids = entry == nullptr ? nullptr : ti::JsonMember(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": special token \"", *name, "\" has no ids in post_processor.special_tokens"));
      }
      TemplateItem t;
      for (const json& id : *ids) {
        if (!id.is_number_integer()) {
          return absl::InvalidArgumentError(
              absl::StrCat("post_processor.special_tokens[\"", *name, "\"].ids: not an integer"));
        }
        t.ids.push_back(id.get<int32_t>());
      }
      result.push_back(std::move(t));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " is neither Sequence nor SpecialToken"));
    }
  }
  template_ = std::move(result);
  return absl::OkStatus();
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!uni::IsValidUtf8(text)) {
    uni::AppendUtf8Lossy(text, /*at_end=*/true, &sanitized);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  std::vector<ti::AddedVocabulary::Segment> segments;
  added_->Split(text, &segments);
  std::vector<std::string> pieces;
  for (const auto& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    pieces.clear();
    pre_tokenizer_->PreTokenize(text.substr(segment.begin, segment.end - segment.begin), &pieces);
    for (const std::string& piece : pieces) model_->Tokenize(piece, &ids);
  }
  if (!add_special_tokens || template_.empty()) return ids;
  std::vector<int32_t> wrapped;
  wrapped.reserve(ids.size() + 4);
  for (const TemplateItem& item : template_) {
    if (item.is_sequence) {
      wrapped.insert(wrapped.end(), ids.begin(), ids.end());
    } else {
      wrapped.insert(wrapped.end(), item.ids.begin(), item.ids.end());
    }
  }
  return wrapped;
}

bool Tokenizer::AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* bytes) const {
  if (id < 0 || id >= num_ids_) return false;
  const uint8_t flags = id_flags_[id];
  if ((flags & kIdKnown) == 0 || (skip_special_tokens && (flags & kIdSpecial) != 0)) {
    return false;
  }
  bytes->append(id_bytes_[id]);
  return true;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) AppendTokenBytes(id, skip_special_tokens, &bytes);
  std::string text;
  text.reserve(bytes.size());
  uni::AppendUtf8Lossy(bytes, /*at_end=*/true, &text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (std::optional<int32_t> id = added_->TokenToId(token)) return id;
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (const ti::AddedToken* a = added_->IdToToken(id)) return a->content;
  if (const std::string* t = model_->IdToToken(id)) return *t;
  return std::nullopt;
}

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDecoder::Push(int32_t id) {
  std::string text;
  if (!tokenizer_.AppendTokenBytes(id, skip_special_tokens_, &pending_)) return text;
  const size_t consumed = uni::AppendUtf8Lossy(pending_, /*at_end=*/false, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string StreamingDecoder::Finish() {
  std::string text;
  uni::AppendUtf8Lossy(pending_, /*at_end=*/true, &text);
  pending_.clear();
  return text;
}

}  // namespace dsv2
