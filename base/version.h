// TEMPORARY stub until the install work lands.
#ifndef DSV2_BASE_VERSION_H_
#define DSV2_BASE_VERSION_H_
#include <string>
namespace dsv2 {
inline std::string VersionString() { return "0.0.0-dev"; }
}  // namespace dsv2
#endif
