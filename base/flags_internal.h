// A flag's definition as FlagSet keeps it, and the helpers flags.cc
// (parsing) and flags_text.cc (--help, --flags-json) share: how a range, a
// unit and a name read. Not for use outside base/.
#ifndef DSV2_BASE_FLAGS_INTERNAL_H_
#define DSV2_BASE_FLAGS_INTERNAL_H_

#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/flags.h"

namespace dsv2::flags::internal {

enum class Kind { kString, kBool, kInt, kDouble, kDuration, kEnum, kRepeated };
using Value =
    std::variant<std::string, bool, absl::int128, double, absl::Duration, std::vector<std::string>>;

// A bound of a numeric range (kInt: int128, kDouble: double, kDuration).
template <typename T>
struct Bound {
  T value{};
  bool exclusive = false;
};

struct FlagDef {
  Kind kind = Kind::kString;
  std::string name;
  std::string help;
  std::vector<std::string> aliases;  // plain renames: same type and value syntax
  std::string legacy_alias;          // kDuration: a number in legacy_unit
  absl::Duration legacy_unit;
  bool required = false;
  std::optional<std::string> default_value;  // generated from the destination; nullopt: none
  std::optional<std::string> default_text;   // DefaultText(): replaces it in --help
  absl::int128 int_type_min, int_type_max;   // the destination type's range
  std::optional<Bound<absl::int128>> int_min, int_max;
  std::optional<Bound<double>> double_min, double_max;
  std::optional<Bound<absl::Duration>> duration_min, duration_max;
  std::vector<std::string> enum_values;
  std::function<void(const Value&)> set;  // writes the destination
};

struct Group {
  std::vector<std::string> names;
  GroupRule rule;
};

std::string FormatInt(absl::int128 v);
std::string FormatDouble(double v);

inline constexpr const char* kBuiltins[] = {"help", "version", "flags-json"};

std::string DurationText(absl::Duration d);  // absl::FormatDuration: "500ms", "2m"

// A legacy alias's unit: "ms" / "milliseconds" for absl::Milliseconds(1)
// (ns, us, ms, s, min, h); another unit reads as the duration ("10ms").
std::string UnitName(absl::Duration unit);
std::string UnitWords(absl::Duration unit);

// The bounds Min/Max/Above set, formatted in the flag's type; nullopt =
// unbounded on that side (an integer flag is still limited to its
// destination type, which is not shown).
struct RangeText {
  std::optional<std::string> min, max;
  bool min_exclusive = false;
  bool max_exclusive = false;
};
RangeText Bounds(const FlagDef& def);
// "in [1, 1024]", "in (0, 1]", ">= 0", "> 0", "<= 9"; "" when unbounded.
std::string Describe(const RangeText& range);

}  // namespace dsv2::flags::internal

#endif  // DSV2_BASE_FLAGS_INTERNAL_H_
