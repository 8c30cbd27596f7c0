// Stable 64-bit fingerprints: values that must agree across processes and
// machines (absl::Hash is salted per process), e.g. the model fingerprints
// cluster members compare at registration. FNV-1a: simple, well known, not
// cryptographic (detects accidents, not attacks).
// Thread-safety: a Fnv1a64 is a value; use one per thread.
#ifndef DSV2_BASE_FINGERPRINT_H_
#define DSV2_BASE_FINGERPRINT_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace dsv2 {

class Fnv1a64 {
 public:
  void Add(std::string_view bytes) {
    for (unsigned char c : bytes) {
      h_ ^= c;
      h_ *= 0x100000001b3ull;
    }
  }
  // 8 bytes, little-endian (the same on every machine).
  void Add(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h_ ^= (v >> (8 * i)) & 0xff;
      h_ *= 0x100000001b3ull;
    }
  }
  uint64_t value() const { return h_; }
  // 16 lowercase hex digits.
  std::string Hex() const {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 0; i < 16; ++i) out[15 - i] = kDigits[(h_ >> (4 * i)) & 0xf];
    return out;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// Whether s is a fingerprint as Hex() writes it.
inline bool IsFingerprint(std::string_view s) {
  if (s.size() != 16) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace dsv2

#endif  // DSV2_BASE_FINGERPRINT_H_
