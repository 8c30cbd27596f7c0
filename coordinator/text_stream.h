// TextStream: the detokenizer state of one generation at the coordinator:
// turns generated token ids into the text chunks a client receives, with
// stop strings (DESIGN.md section 2; proto/inference.proto Generate).
//
// Invariants: each returned chunk is valid UTF-8 (never half a character);
// text that could still be the beginning of a stop string is held back until
// decided; once a stop string appears, the text before it is returned and
// neither the stop string nor anything after it ever is. The concatenation
// of all returned chunks equals Decode(rendered ids, skip_special_tokens)
// cut before the first stop string.
//
// Thread-safety: one thread at a time. The Tokenizer must outlive it.
#ifndef DSV2_COORDINATOR_TEXT_STREAM_H_
#define DSV2_COORDINATOR_TEXT_STREAM_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace dsv2::coordinator {

class TextStream {
 public:
  // `tokenizer` may be null (a model without tokenizer.json): no text.
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  struct Chunk {
    std::string text;      // text that became final
    bool stopped = false;  // a stop string appeared: generation must end
  };
  // Adds one generated token. `render` = false for tokens whose text is
  // never shown (EOS, stop_token_ids): they add no text (as Decode of the
  // rendered ids only).
  Chunk Push(int32_t token_id, bool render);
  // End of generation without a stop string: the held-back text (an
  // incomplete UTF-8 tail becomes U+FFFD).
  Chunk Finish();

  bool stopped() const { return stopped_; }
  // All text returned so far.
  const std::string& text() const { return text_; }

 private:
  // Moves the decided part of pending_ to the returned chunk.
  Chunk Settle(bool final);

  std::optional<StreamingDecoder> decoder_;
  const std::vector<std::string> stop_strings_;
  std::string pending_;  // decoded, not yet returned (a possible stop prefix)
  std::string text_;
  bool stopped_ = false;
};

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_TEXT_STREAM_H_
