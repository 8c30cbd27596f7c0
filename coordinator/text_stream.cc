#include "coordinator/text_stream.h"

#include <algorithm>
#include <utility>

namespace dsv2::coordinator {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : stop_strings_(std::move(stop_strings)) {
  if (tokenizer != nullptr) decoder_.emplace(*tokenizer, /*skip_special_tokens=*/true);
}

TextStream::Chunk TextStream::Push(int32_t token_id, bool render) {
  if (stopped_ || !decoder_) return Chunk{};
  // A token that is not rendered still completes (or breaks) a pending UTF-8
  // sequence: flush the decoder as Decode of the rendered ids would.
  pending_ += render ? decoder_->Push(token_id) : std::string();
  return Settle(/*final=*/false);
}

TextStream::Chunk TextStream::Finish() {
  if (stopped_ || !decoder_) return Chunk{};
  pending_ += decoder_->Finish();
  return Settle(/*final=*/true);
}

TextStream::Chunk TextStream::Settle(bool final) {
  Chunk out;
  // The earliest complete stop string wins.
  size_t cut = std::string::npos;
  for (const std::string& s : stop_strings_) {
    const size_t at = pending_.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    out.text = pending_.substr(0, cut);
    out.stopped = stopped_ = true;
    pending_.clear();
  } else if (final) {
    out.text = std::move(pending_);
    pending_.clear();
  } else {
    // Hold back the longest suffix that is a proper prefix of a stop
    // string. Stop strings are valid UTF-8, so the cut is at a character
    // boundary.
    size_t keep_from = pending_.size();
    for (const std::string& s : stop_strings_) {
      const size_t max_len = std::min(s.size() - 1, pending_.size());
      for (size_t len = max_len; len > 0; --len) {
        if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
          keep_from = std::min(keep_from, pending_.size() - len);
          break;
        }
      }
    }
    out.text = pending_.substr(0, keep_from);
    pending_.erase(0, keep_from);
  }
  text_ += out.text;
  return out;
}

}  // namespace dsv2::coordinator
